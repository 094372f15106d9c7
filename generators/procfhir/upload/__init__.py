"""The upload stage: send a FHIR package to a server safely (idempotent, atomic, resumable).

Python API::

    from procfhir.upload import Uploader, load_resources
    up = Uploader("https://fhir.example.org/fhir", auth=BearerAuth(token))
    report = up.upload(load_resources("fhir/"), mode="transaction", verify=True)
    print(report.summary_table())
"""

from procfhir.upload.auth import Auth, BasicAuth, BearerAuth, NoAuth, SmartBackendAuth, read_secret
from procfhir.upload.client import FhirClient, check_url_security
from procfhir.upload.errors import AuthError, OutcomeUnknown, TransportError, UploadError
from procfhir.upload.report import Issue, ResourceResult, UploadReport
from procfhir.upload.resources import dependency_order, load_resources
from procfhir.upload.retry import RetryPolicy, parse_retry_after
from procfhir.upload.uploader import MODES, PlannedAction, Uploader

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
