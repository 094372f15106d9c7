"""The upload stage: send a FHIR package to a server safely (idempotent, atomic, resumable).

Python API::

    from generators.upload import Uploader, load_resources
    up = Uploader("https://fhir.example.org/fhir", auth=BearerAuth(token))
    report = up.upload(load_resources("fhir/"), mode="transaction", verify=True)
    print(report.summary_table())
"""

from generators.upload.auth import Auth, BasicAuth, BearerAuth, NoAuth, SmartBackendAuth, read_secret
from generators.upload.client import FhirClient, check_url_security
from generators.upload.errors import AuthError, OutcomeUnknown, TransportError, UploadError
from generators.upload.report import Issue, ResourceResult, UploadReport
from generators.upload.resources import dependency_order, load_resources
from generators.upload.retry import RetryPolicy, parse_retry_after
from generators.upload.uploader import MODES, PlannedAction, Uploader

__all__ = [
    "MODES",
    "Auth",
    "AuthError",
    "BasicAuth",
    "BearerAuth",
    "FhirClient",
    "Issue",
    "NoAuth",
    "OutcomeUnknown",
    "PlannedAction",
    "ResourceResult",
    "RetryPolicy",
    "SmartBackendAuth",
    "TransportError",
    "UploadError",
    "UploadReport",
    "Uploader",
    "check_url_security",
    "dependency_order",
    "load_resources",
    "parse_retry_after",
    "read_secret",
]
