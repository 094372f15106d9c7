"""Offline FHIR R4 validator driven by the R4 StructureDefinitions (see ``engine.Validator``).

Python API::

    from procfhir.validator import Validator, to_operation_outcome
    v = Validator(extra_definitions=[...])
    issues = v.validate(resource, profile=None)
    outcome = to_operation_outcome(issues)
"""

from procfhir import native

# the compiled build of the walk's modules when one of the current source exists (procfhir.native)
native.activate()

from procfhir.validator.definitions import DefinitionsError  # noqa: E402
from procfhir.validator.engine import Validator  # noqa: E402
from procfhir.validator.issues import Issue, has_errors, summary, to_operation_outcome  # noqa: E402

__all__ = ["DefinitionsError", "Issue", "Validator", "has_errors", "summary", "to_operation_outcome"]
