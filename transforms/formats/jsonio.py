"""JSON in and out for every manifest, index and config this package touches.

Parsing and generating go through one place so that two rules hold everywhere:

* a document that is not JSON becomes a :class:`FormatError` with a one-line message
  (never a ``JSONDecodeError`` leaking out of a pipeline step with a multi-line repr);
* a document we *generate* always has the same bytes for the same input, because its
  digest is its identity: two runs (or two workers) converting one image must agree.

Documents we merely *copy* are never passed through :func:`dumps`; their original bytes
are kept, since any re-serialisation changes their digest (docs/formats.md §2).
"""

from __future__ import annotations

import calendar
import json
import re
from typing import Any

import orjson

from imagepush.transforms.formats.descriptor import FormatError

# Go's encoding/json escapes these inside strings; see ``dumps``. Outside strings they
# cannot occur in JSON at all, so a byte-level replacement only ever touches string content.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def loads(data: bytes) -> Any:
    """Parse ``data`` as JSON; invalid JSON (or invalid UTF-8) raises :class:`FormatError`.

    orjson keeps the *last* of duplicate keys, like Python's json module. Callers that
    must not be fooled by duplicates (signed schema1) parse only the bytes that matter.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        message = " ".join(str(exc).split())
        raise FormatError(f"invalid JSON: {message}") from None


def load_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` and require a JSON object; ``what`` names the document in errors."""
    doc = loads(data)
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a JSON object")
    return doc


def dumps(obj: Any) -> bytes:
    """Serialise a document we generate: compact, keys in insertion order, Go-style escapes.

    Key order is the caller's business (dicts are built in the field order of the Go
    structs that define each format), so nothing is sorted here. On top of orjson's
    compact output we escape ``<``, ``>``, ``&``, U+2028 and U+2029 exactly as Go's
    ``encoding/json`` does. That keeps our output semantically identical JSON while making
    it byte-identical to what containers/image (skopeo, podman, buildah) emits for the same
    conversion, so an image converted by either tool gets the same digest and a registry
    that already holds the other tool's result needs no new upload.
    """
    out = orjson.dumps(obj)
    for raw, escaped in _GO_ESCAPES:
        if raw in out:
            out = out.replace(raw, escaped)
    return out


def optional_str(doc: dict[str, Any], key: str, where: str) -> str:
    """A string field of a parsed document, null or absent meaning empty; other types are format errors."""
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"{where} {key} is not a string")
    return value


#: What Go's ``time.Time.UnmarshalJSON`` accepts: RFC 3339 with an optional fraction.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))\Z"
)

#: Go's zero ``time.Time`` as ``encoding/json`` writes it.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def go_time(text: str, where: str) -> str:
    """A timestamp as Go writes it after reading it into a ``time.Time``.

    containers/image reads config timestamps into ``time.Time`` and marshals them again,
    which is ``time.RFC3339Nano``: the fraction loses its trailing zeros (and its dot when
    nothing is left), an offset of zero is written ``Z`` and any other offset is kept as
    written (``+02:00`` stays; the instant is not moved to UTC). Only the spelling
    changes, never the instant, so the converted config's digest matches skopeo's. Text
    Go would refuse is a :class:`FormatError`, as it makes skopeo fail.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise FormatError(f"{where} {text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if not (
        1 <= int(month) <= 12
        and 1 <= int(day) <= calendar.monthrange(int(year) or 2000, int(month))[1]
        and int(hour) < 24
        and int(minute) < 60
        and int(second) < 60
        and (zulu or (int(off_h) < 24 and int(off_m) < 60))
    ):
        raise FormatError(f"{where} {text!r} is not a valid time")
    out = f"{year}-{month}-{day}T{hour}:{minute}:{second}"
    digits = (fraction or "")[:9].rstrip("0")
    if digits:
        out += "." + digits
    if zulu or (off_h == "00" and off_m == "00"):
        return out + "Z"
    return f"{out}{sign}{off_h}:{off_m}"


_JSON_SPACE = " \t\n\r"


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _JSON_SPACE:
        i += 1
    return i


def _go_compact(raw: str) -> bytes:
    """``raw`` without the whitespace outside strings, as Go's encoder writes a RawMessage.

    Everything else is kept as written (``1.50``, ``1E3``, ``\\u00e9``, ``\\/``); the HTML
    escapes Go adds at the same time are applied by :func:`dumps` to the whole document.
    """
    out: list[str] = []
    in_string = escaped = False
    for ch in raw:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch not in _JSON_SPACE:
            out.append(ch)
            in_string = ch == '"'
    return "".join(out).encode("utf-8", "surrogatepass")


def raw_members(text: str, where: str) -> dict[str, Any]:
    """The members of a JSON object as Go's ``map[string]*json.RawMessage`` keeps them.

    containers/image builds a schema1 image's config from the top ``v1Compatibility``
    read into such a map, so the values are written back as they were spelled (only
    compacted and HTML-escaped), not re-serialised: ``1.50`` stays ``1.50`` and ``"caf\\u00e9"``
    keeps its escape. Values come back as ``orjson.Fragment`` for :func:`dumps`; a repeated
    key keeps its last value, as Go's decoder does. ``text`` must already be valid JSON.
    """
    decoder = json.JSONDecoder()
    members: dict[str, Any] = {}
    i = _skip_space(text, 0)
    if not text.startswith("{", i):
        raise FormatError(f"{where} is not a JSON object")
    i = _skip_space(text, i + 1)
    if text.startswith("}", i):
        return members
    while True:
        if not text.startswith('"', i):
            raise FormatError(f"{where} has a malformed member at offset {i}")
        key, i = json.decoder.scanstring(text, i + 1)
        i = _skip_space(text, i)
        if not text.startswith(":", i):
            raise FormatError(f"{where} has a malformed member at offset {i}")
        start = _skip_space(text, i + 1)
        try:
            _, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{where}: invalid JSON: {exc.msg}") from None
        members.pop(key, None)
        members[key] = orjson.Fragment(_go_compact(text[start:end]))
        i = _skip_space(text, end)
        if text.startswith("}", i):
            return members
        if not text.startswith(",", i):
            raise FormatError(f"{where} has a malformed member at offset {i}")
        i = _skip_space(text, i + 1)
