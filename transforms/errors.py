"""The one error hierarchy: what went wrong, as a kind the audit can be queried by.

Every module raises subclasses of :class:`ImagepushError`, whose ``kind`` becomes the
audit's ``error_kind`` column; this module imports nothing of the project, so formats,
stores and the engine can all build on it. Exceptions that are not ours (a bug, or a
library failing in a way nobody wrapped) are of kind ``internal`` and are logged with
their traceback at debug level when they are turned into a message.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: The image, manifest, blob or repository asked for does not exist.
NOT_FOUND = "not_found"
#: Credentials were missing, wrong, or not allowed to do this.
AUTH = "auth"
#: Bytes read do not match the digest (or size) that names them.
DIGEST_MISMATCH = "digest_mismatch"
#: The store understood the request and would not do it (a manifest type it does not take).
REFUSED = "refused"
#: The store could not be reached, or kept failing through every retry.
UNREACHABLE = "unreachable"
#: A reference, manifest, config or option that is malformed or unsupported.
INVALID_INPUT = "invalid_input"
#: Something an image needs is absent where it should be (a blob its manifest lists).
MISSING = "missing"
#: A store holds something other than what was expected (a name at another digest).
MISMATCH = "mismatch"
#: Anything unexpected: a bug, or an unwrapped library failure.
INTERNAL = "internal"

KINDS = (NOT_FOUND, AUTH, DIGEST_MISMATCH, REFUSED, UNREACHABLE, INVALID_INPUT, MISSING, MISMATCH, INTERNAL)


class ImagepushError(Exception):
    """Base of every error imagepush raises on purpose; the message is one line for the user."""

    kind: str = INTERNAL


def error_kind(exc: BaseException) -> str:
    """The audit's ``error_kind`` for an exception: its own kind, or ``internal``."""
    if isinstance(exc, ImagepushError):
        return exc.kind
    if isinstance(exc, FileNotFoundError):
        return NOT_FOUND
    if isinstance(exc, PermissionError):
        return AUTH
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return UNREACHABLE
    return INTERNAL


def one_line(exc: BaseException) -> str:
    """A single line naming what went wrong; unexpected errors keep their type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"not found: {exc.filename}"
    if (error_kind(exc) == INTERNAL and not isinstance(exc, OSError)) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        log.debug("unexpected error", exc_info=exc)
    return text


def describe(exc: BaseException) -> tuple[str, str]:
    """``(one-line message, kind)``: what an audit row records of a failure."""
    return one_line(exc), error_kind(exc)


def is_expected(exc: BaseException) -> bool:
    """Whether the error describes the data or a store rather than a bug in imagepush."""
    return isinstance(exc, (ImagepushError, OSError))
