"""Stage 3: FHIR R4 resources built from the checked mapping (plain dicts, in JSON order)."""
