"""procedure-fhir: a clinical procedure text turned into a validated FHIR R4 content package.

Stages (one module each): ``source`` (text to sentences), ``mapping`` (the human-edited mapping
checked against the text), ``model`` (the knowledge model), ``builders`` (FHIR resources),
``packaging`` (fhir/ folder, Bundle, NPM package), ``validator``, ``upload``, ``apply``, ``review``.
"""

__version__ = "0.1.0"
