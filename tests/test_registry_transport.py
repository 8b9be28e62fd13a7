"""The one retry loop of the registry transport: which outcomes are transient, and what follows.

No sockets: a scripted exchange answers in place of the wire, the sleep is recorded
instead of waited, and the clock is a number the test moves.
"""

from __future__ import annotations

import io
import socket
import ssl
from typing import Mapping

import pytest
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError, ProtocolError, ProxyError,
    ReadTimeoutError, SSLError,
)

from imagepush.transforms.stores.options import StoreOptions
from imagepush.transforms.stores.registry import (
    RegistryError, RegistryMisconfigured, RegistryUnavailable, RetriableUploadError,
)
from imagepush.transforms.stores.registry.transport import HOST_DOWN_SECONDS, Transport, is_transient
from imagepush.transforms.stores.registry.wire import Outgoing

HOST = "registry.test"
URL = f"https://{HOST}/v2/app/tags/list"

#: One scripted outcome: an exception the exchange raises, or the (status, headers) it answers.
Outcome = BaseException | tuple[int, Mapping[str, str]]


class Scripted:
    """An exchange that plays a script of outcomes and records each request as it would go out.

    Requests to URLs outside ``prefix`` are a test's mistake: they fail it.
    """

    def __init__(self, script: list[Outcome], prefix: str) -> None:
        self.script = list(script)
        self.prefix = prefix
        self.sent: list[Outgoing] = []

    def __call__(self, request: Outgoing) -> urllib3.BaseHTTPResponse:
        assert request.url.startswith(self.prefix), f"unexpected request to {request.url}"
        self.sent.append(request)
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        status, headers = outcome
        return urllib3.HTTPResponse(body=io.BytesIO(b""), headers=headers, status=status, preload_content=False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class Passing(Clock):
    """A clock that moves by every sleep, for rules that count seconds rather than attempts."""

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.now += seconds


def transport(
    clock: Clock, script: list[Outcome], prefix: str = f"https://{HOST}/", options: StoreOptions = StoreOptions()
) -> tuple[Transport, Scripted]:
    exchange = Scripted(script, prefix)
    t = Transport(HOST, options, max_attempts=3, sleep=clock.sleep, clock=clock, exchange=exchange)
    return t, exchange


def send(t: Transport, url: str = URL, **kw: object) -> int:
    streamed = t.send("GET", url, where=f"{HOST}/app", what="tag list", **kw)  # type: ignore[arg-type]
    streamed.close()
    return streamed.status_code


def connection_error() -> BaseException:
    """What urllib3 raises (``retries=False``) when a connection breaks: a reset, or closed before the answer."""
    return ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))


def read_timeout() -> BaseException:
    return ReadTimeoutError(None, URL, "Read timed out.")  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", [
    connection_error(), ProxyError("Unable to connect to proxy", OSError("refused")),
    ConnectTimeoutError(), read_timeout(), NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    NameResolutionError(HOST, None, socket.gaierror(-2, "Name or service not known")),  # type: ignore[arg-type]
    429, 500, 502, 503, 504,
])
def test_transient_outcomes(outcome: BaseException | int) -> None:
    assert is_transient(outcome) is True


@pytest.mark.parametrize("outcome", [
    ValueError("a bug"), LocationParseError("http://[x"), RegistryError("too many redirects"), SSLError(),
    200, 201, 202, 206, 307, 400, 401, 403, 404, 405, 416,
])
def test_outcomes_that_are_answers(outcome: BaseException | int) -> None:
    assert is_transient(outcome) is False


def test_transient_answers_are_retried_with_backoff_and_retry_after() -> None:
    clock = Clock()
    t, adapter = transport(clock, [(503, {}), (429, {"Retry-After": "7"}), (200, {})])
    assert send(t) == 200
    assert len(adapter.sent) == 3
    assert len(clock.sleeps) == 2 and 0.25 <= clock.sleeps[0] <= 0.5 and clock.sleeps[1] == 7.0


def test_transient_exceptions_are_retried() -> None:
    clock = Clock()
    t, adapter = transport(clock, [connection_error(), read_timeout(), (200, {})])
    assert send(t) == 200
    assert len(adapter.sent) == 3 and len(clock.sleeps) == 2


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404])
def test_answers_are_returned_at_once(status: int) -> None:
    clock = Clock()
    t, adapter = transport(clock, [(status, {})])
    assert send(t) == status
    assert len(adapter.sent) == 1 and clock.sleeps == []


def test_an_exception_that_is_no_transport_failure_is_raised_at_once() -> None:
    clock = Clock()
    t, adapter = transport(clock, [ValueError("a bug"), (200, {})])
    with pytest.raises(ValueError, match="a bug"):
        send(t)
    assert len(adapter.sent) == 1 and clock.sleeps == []
    t.fail_if_down(HOST, "next request")  # the host is not marked down
    assert send(t) == 200


def test_a_transient_answer_through_every_attempt_is_returned_for_the_caller_to_judge() -> None:
    clock = Clock()
    t, adapter = transport(clock, [(503, {})] * 3)
    assert send(t) == 503
    assert len(adapter.sent) == 3 and len(clock.sleeps) == 2
    t.fail_if_down(HOST, "next request")  # it answered: not down


def test_attempts_lower_the_budget_but_never_raise_it() -> None:
    clock = Clock()
    t, adapter = transport(clock, [(500, {})] * 3)
    assert send(t, attempts=2) == 500
    assert len(adapter.sent) == 2 and len(clock.sleeps) == 1
    t, adapter = transport(clock, [(500, {})] * 3)
    assert send(t, attempts=10) == 500
    assert len(adapter.sent) == 3


def test_a_host_that_never_answers_is_marked_down_until_its_cool_down() -> None:
    clock = Clock()
    t, adapter = transport(clock, [connection_error() for _ in range(3)] + [(200, {})])
    with pytest.raises(RegistryUnavailable) as info:
        send(t)
    assert str(info.value) == (f"{HOST}/app: tag list failed: cannot reach {HOST} "
                               "(ProtocolError: ConnectionResetError) after 3 attempts")
    assert info.value.kind == "unreachable" and len(clock.sleeps) == 2
    with pytest.raises(RegistryUnavailable, match=rf"^{HOST}/other: manifest not attempted: cannot reach {HOST} "):
        t.fail_if_down(f"{HOST}/other", "manifest")
    clock.now = HOST_DOWN_SECONDS
    t.fail_if_down(f"{HOST}/other", "manifest")
    assert send(t) == 200


def test_another_host_that_never_answers_does_not_mark_the_registry_down() -> None:
    clock = Clock()
    t, _ = transport(clock, [ConnectTimeoutError() for _ in range(3)], prefix="https://auth.test/")
    with pytest.raises(RegistryUnavailable, match=r"token request failed: cannot reach auth\.test \(ConnectTimeoutError"):
        t.send("GET", "https://auth.test/token", where=f"{HOST}/app", what="token request", limited=False)
    t.fail_if_down(HOST, "next request")


def test_a_streamed_body_is_sent_once() -> None:
    clock = Clock()
    t, adapter = transport(clock, [connection_error()])
    with pytest.raises(RetriableUploadError, match=r"^registry\.test/app: upload interrupted "
                                                   r"\(ProtocolError: ConnectionResetError\); "
                                                   r"the upload must start again$"):
        t.send("PATCH", URL, where=f"{HOST}/app", what="upload", body=iter([b"x"]), replayable=False)
    t, adapter = transport(clock, [(503, {}), (202, {})])
    streamed = t.send("PATCH", URL, where=f"{HOST}/app", what="upload", body=iter([b"x"]), replayable=False)
    streamed.close()
    assert streamed.status_code == 503 and len(adapter.sent) == 1
    assert clock.sleeps == []


class Renewing:
    """An authorization that hands out a new header each time it is asked to renew."""

    def __init__(self) -> None:
        self.renewals: list[str] = []

    def header(self) -> str | None:
        return f"Bearer token{len(self.renewals)}"

    def renew(self, headers: Mapping[str, str], body: bytes) -> None:
        self.renewals.append(headers.get("WWW-Authenticate", ""))


def test_a_401_is_answered_by_renewing_once_within_the_same_budget() -> None:
    clock = Clock()
    challenge = {"WWW-Authenticate": 'Bearer realm="https://auth.test/token"'}
    t, adapter = transport(clock, [(401, challenge), (503, {}), (401, challenge)])
    authorization = Renewing()
    assert send(t, authorization=authorization) == 401  # refused again: the caller says so
    assert authorization.renewals == [challenge["WWW-Authenticate"]]
    assert [r.headers["Authorization"] for r in adapter.sent] == ["Bearer token0", "Bearer token1", "Bearer token1"]
    assert len(clock.sleeps) == 1  # only the 503 waited; the renewal counted as an attempt


def caused_by(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` caused by ``inner``, as urllib3 raises a socket's or OpenSSL's error."""
    outer.__cause__ = inner
    return outer


def plain_http_answer() -> BaseException:
    inner = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    inner.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    return caused_by(SSLError(inner), inner)


def refused() -> BaseException:
    return caused_by(NewConnectionError(None, "Failed to establish a new connection"),  # type: ignore[arg-type]
                     ConnectionRefusedError(111, "Connection refused"))


def unresolvable() -> BaseException:
    inner = socket.gaierror(-2, "Name or service not known")
    return caused_by(NameResolutionError(HOST, None, inner), inner)  # type: ignore[arg-type]


# -- misconfiguration fails at once -----------------------------------------------------------


def test_a_registry_answering_tls_in_plain_http_names_the_flag_at_once_and_for_every_later_request() -> None:
    clock = Clock()
    t, adapter = transport(clock, [plain_http_answer(), (200, {})])
    with pytest.raises(RegistryMisconfigured) as info:
        send(t)
    message = f"{HOST} speaks plain HTTP, not TLS: use --insecure-registry {HOST}"
    assert str(info.value) == message
    assert info.value.kind == "invalid_input"
    assert len(adapter.sent) == 1 and clock.sleeps == []
    with pytest.raises(RegistryMisconfigured) as again:
        t.fail_if_down(f"{HOST}/other", "manifest")
    assert str(again.value) == str(info.value)  # the same words for every image: the summary says it once


def test_an_untrusted_certificate_fails_at_once_and_names_both_remedies() -> None:
    clock = Clock()
    inner = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    inner.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[misc]
    t, adapter = transport(clock, [caused_by(SSLError(inner), inner)])
    with pytest.raises(RegistryMisconfigured) as info:
        send(t)
    assert str(info.value) == (f"TLS with {HOST} failed (CERTIFICATE_VERIFY_FAILED): trust its CA with "
                               f"--ca-bundle, or use --insecure-registry {HOST}")
    assert len(adapter.sent) == 1 and clock.sleeps == []


@pytest.mark.parametrize(("failure", "why"), [(refused, "connection refused"),
                                              (unresolvable, "the name does not resolve")])
def test_a_registry_never_reached_that_refuses_or_does_not_resolve_fails_at_once(failure, why) -> None:
    clock = Clock()
    t, adapter = transport(clock, [failure(), (200, {})])
    with pytest.raises(RegistryUnavailable) as info:
        send(t)
    assert str(info.value) == f"{HOST}/app: tag list failed: cannot reach {HOST} ({why})"
    assert len(adapter.sent) == 1 and clock.sleeps == []
    with pytest.raises(RegistryUnavailable, match=rf"not attempted: cannot reach {HOST} \({why}\)$"):
        t.fail_if_down(f"{HOST}/other", "manifest")


def test_a_timeout_of_a_registry_never_reached_is_still_retried() -> None:
    clock = Clock()
    t, adapter = transport(clock, [ConnectTimeoutError(), (200, {})])
    assert send(t) == 200
    assert len(adapter.sent) == 2


# -- outages ------------------------------------------------------------------------------


def test_a_registry_that_answered_is_waited_for_beyond_the_attempt_budget_within_the_grace() -> None:
    clock = Passing()
    t, adapter = transport(clock, [(200, {})] + [refused()] * 6 + [(200, {})],
                           options=StoreOptions(outage_grace=30.0))
    assert send(t) == 200
    assert send(t) == 200  # six refusals, twice the budget of three attempts: a restart ridden out
    assert len(adapter.sent) == 8
    assert sum(clock.sleeps) < 30.0
    t.fail_if_down(HOST, "next request")


def test_an_outage_longer_than_the_grace_fails_and_marks_the_registry_down() -> None:
    clock = Passing()
    t, adapter = transport(clock, [(200, {})] + [refused()] * 100, options=StoreOptions(outage_grace=10.0))
    assert send(t) == 200
    with pytest.raises(RegistryUnavailable, match=rf"^{HOST}/app: tag list failed: cannot reach {HOST} "
                                                  r"\(NewConnectionError: ConnectionRefusedError\) after \d+ attempts$"):
        send(t)
    assert 10.0 <= clock.now <= 10.5  # the last wait ends with the grace, not a backoff step later
    with pytest.raises(RegistryUnavailable, match="not attempted"):
        t.fail_if_down(f"{HOST}/other", "manifest")


def test_the_grace_starts_with_the_first_failure_of_an_outage_and_ends_with_the_next_answer() -> None:
    clock = Passing()
    script: list[Outcome] = [(200, {}), refused(), refused(), (200, {}), refused(), (200, {})]
    t, adapter = transport(clock, script, options=StoreOptions(outage_grace=30.0))
    for _ in range(3):
        assert send(t) == 200
    assert len(adapter.sent) == 6


def test_no_grace_keeps_the_attempt_budget() -> None:
    clock = Passing()
    t, adapter = transport(clock, [(200, {})] + [refused()] * 3, options=StoreOptions(outage_grace=0))
    assert send(t) == 200
    with pytest.raises(RegistryUnavailable, match=r"after 3 attempts$"):
        send(t)
    assert len(adapter.sent) == 4
