"""Errors of the upload stage. Messages never carry secrets (passwords, tokens, keys)."""

from __future__ import annotations


class UploadError(Exception):
    """Bad input or configuration, or a failure that stops the upload: a message for the user."""


class AuthError(UploadError):
    """Authentication could not be set up or was refused."""


class TransportError(UploadError):
    """The server could not be reached or kept failing after every allowed attempt."""


class OutcomeUnknown(TransportError):
    """A non-idempotent request was sent but its response was lost: the server may have applied it."""
