"""The errors of registry stores, and how a registry's answer becomes one.

Every failure is a :class:`~imagepush.transforms.stores.base.StoreError` with a one-line
message that names the repository and the registry's error ``code``; the ``kind`` comes
from the answer (see :mod:`imagepush.transforms.errors`). Credentials never appear in
messages.
"""

from __future__ import annotations

import json
from typing import Any

from imagepush.transforms.errors import AUTH, INVALID_INPUT, NOT_FOUND, REFUSED, UNREACHABLE
from imagepush.transforms.stores.base import NotFound, StoreError, UploadInterrupted


class RegistryError(StoreError):
    """A registry answered with an error, or could not be reached.

    ``status`` is the HTTP status (None for connection failures), ``code`` the first
    registry error code from the JSON body (``MANIFEST_UNKNOWN``, ``DENIED``, …) and
    ``detail`` the short description shown in parentheses in the message.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail or code or (f"HTTP {status}" if status else None)

    @property
    def kind(self) -> str:  # type: ignore[override]
        """From the answer: refused, or (no answer, 429, 5xx) unreachable; subclasses are exact."""
        if self.status in (401, 403):
            return AUTH
        if self.status == 404:
            return NOT_FOUND
        if self.status is None or self.status == 429 or self.status >= 500:
            return UNREACHABLE
        return REFUSED


class AuthenticationError(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""

    kind = AUTH  # type: ignore[assignment]


class AccessDenied(RegistryError):
    """Authenticated, but not allowed to do this (HTTP 403, ``DENIED``)."""

    kind = AUTH  # type: ignore[assignment]


class RegistryNotFound(NotFound, RegistryError):
    """The repository, manifest, blob or upload session does not exist (HTTP 404)."""


class RegistryUnavailable(RegistryError):
    """Connection failures, 429 or 5xx that persisted through every retry."""

    kind = UNREACHABLE  # type: ignore[assignment]


class RegistryMisconfigured(RegistryError):
    """TLS with the registry failed: its options (``--insecure-registry``, ``--ca-bundle``) are wrong.

    Not transient: the same handshake fails the same way however often it is tried.
    """

    kind = INVALID_INPUT  # type: ignore[assignment]


class RetriableUploadError(RegistryError, UploadInterrupted):
    """A streamed request failed after its body was (partly) consumed, or its session was lost.

    The stream cannot be replayed, so the client does not retry it; the upload as a
    whole may succeed if the caller starts again with a fresh read of the source and a
    fresh session (see :class:`~imagepush.transforms.stores.base.UploadInterrupted`).
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, detail: str | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(message, status=status, code=code, detail=detail)
        self.delay = delay


class ResponseTooLarge(RegistryError):
    """A response body longer than the caller's limit (a manifest over 4 MiB is not one)."""


class InvalidName(StoreError):
    """A name no registry takes (not a tag), refused before asking one."""

    kind = INVALID_INPUT


def collapse(text: str, limit: int = 200) -> str:
    """Collapse whitespace (registry messages may span lines) and cap the length."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def registry_error_detail(body: bytes) -> tuple[str | None, str | None]:
    """``(code, message)`` of the first entry of ``{"errors":[{"code","message"}]}``."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = errors[0].get("code"), errors[0].get("message")
            detail = errors[0].get("detail")
            text = str(message) if message else ""
            if isinstance(detail, str) and detail and detail not in text:
                text = f"{text}; {detail}" if text else detail
            return (str(code) if code else None), (collapse(text) if text else None)
        # OAuth2 token servers answer {"error": "...", "error_description": "..."}.
        if isinstance(doc.get("error"), str):
            desc = doc.get("error_description")
            return doc["error"], collapse(str(desc)) if desc else None
    return None, None


def describe(status: int, code: str | None, message: str | None, body: bytes = b"") -> str:
    """``MANIFEST_INVALID: manifest invalid`` / ``HTTP 502`` — the parenthesised part of messages."""
    if code and message and message.lower() != code.lower().replace("_", " "):
        return f"{code}: {message}"
    if code:
        return code
    text = collapse(body.decode("utf-8", errors="replace"), 120) if body else ""
    if text and not text.lstrip().startswith("<"):  # skip HTML error pages
        return f"HTTP {status}: {text}"
    return f"HTTP {status}"


def error_for(status: int, body: bytes, where: str, what: str, attempts: int) -> RegistryError:
    """The exception for a final non-success answer, with the registry's code.

    ``attempts`` is the client's retry budget, named in the message of an answer that
    stayed transient through it.
    """
    code, message = registry_error_detail(body)
    detail = describe(status, code, message, body)
    info: dict[str, Any] = {"status": status, "code": code, "detail": detail}
    if status == 401:
        return AuthenticationError(f"{where}: {what}: authentication failed ({detail})", **info)
    if status == 403:
        return AccessDenied(f"{where}: {what}: access denied ({detail})", **info)
    if status == 404:
        return RegistryNotFound(f"{where}: {what}: not found ({detail})", **info)
    if status == 429 or status >= 500:
        return RegistryUnavailable(f"{where}: {what} failed after {attempts} attempts ({detail})", **info)
    return RegistryError(f"{where}: {what} failed ({detail})", **info)
