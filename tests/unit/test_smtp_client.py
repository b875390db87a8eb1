"""The dispatcher's lean SMTP client against real servers on the loopback: aiosmtpd (in this
process, with and without PIPELINING, STARTTLS and AUTH) and Postfix's smtp-sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.providers.smtp import LeanSmtpProvider, SmtpOptions, build

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def _message(n: int = 0, **kw: str) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "channel": "email", "to": f"voter{n}@example.org", "sender": "Office <o@example.org>",
        "subject": f"Polling day {n}", "body": f"Hello {n}", "idempotency_key": f"key-{n}"}
    fields.update(kw)
    return OutgoingMessage(**fields)


@dataclass
class Handler:
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    pipelining: bool = True
    over_tls: list[bool] = field(default_factory=list)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.over_tls.append(session.ssl is not None)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              envelope.original_content or b""))
        return "250 Message accepted"


class Server:
    """aiosmtpd on an ephemeral port, recording each TCP read and each connection."""

    def __init__(self, handler: Handler, **smtp_kw: Any) -> None:
        self.handler = handler
        self.reads: list[bytes] = []
        self.protocols: list[SMTP] = []
        self._smtp_kw = smtp_kw
        self.port = 0
        self._server: asyncio.Server | None = None

    def _protocol(self) -> SMTP:
        server = self

        class Recording(SMTP):
            def data_received(self, data: bytes) -> None:
                server.reads.append(data)
                super().data_received(data)

        protocol = Recording(self.handler, hostname="test-smtp", **self._smtp_kw)
        self.protocols.append(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        await self._server.wait_closed()

    def drop_connections(self) -> None:
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()


@contextlib.asynccontextmanager
async def running(handler: Handler, **smtp_kw: Any) -> AsyncIterator[Server]:
    server = Server(handler, **smtp_kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _received(raw: bytes) -> Any:
    return message_from_bytes(raw, policy=policy.default)


async def test_pipelining_sends_mail_rcpt_and_data_in_one_write_and_every_message_once() -> None:
    handler = Handler()
    async with running(handler) as server:
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=3)
        ids = await asyncio.gather(*(provider.send(_message(n)) for n in range(30)))
        await provider.close()
    assert sorted(ids) == sorted(f"key-{n}@sendout.local" for n in range(30))
    assert sorted(rcpt[0] for _, rcpt, _ in handler.messages) == sorted(
        f"voter{n}@example.org" for n in range(30))
    envelopes = [r for r in server.reads if b"MAIL FROM:" in r]
    assert envelopes and all(b"RCPT TO:" in r and r.endswith(b"DATA\r\n") for r in envelopes)
    assert len(server.protocols) == 3  # sessions kept open and reused


async def test_a_server_without_pipelining_gets_one_command_per_round_trip() -> None:
    handler = Handler(pipelining=False)
    async with running(handler) as server:
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=2)
        await asyncio.gather(*(provider.send(_message(n)) for n in range(10)))
        await provider.close()
    assert len(handler.messages) == 10
    assert not [r for r in server.reads if b"MAIL FROM:" in r and b"RCPT TO:" in r]


async def test_the_message_arrives_as_built_headers_unicode_and_dots_intact() -> None:
    handler = Handler()
    body = ".starts with a dot\n..two\nÉlection: bureau n°3 — ouvert\r\nend"
    message = _message(1, subject="Élection: votre bureau de vote", body=body,
                       sender="Mairie de Créteil <mairie@example.org>")
    async with running(handler) as server:
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=1)
        message_id = await provider.send(message)
        await provider.close()
    [(mail_from, rcpt, raw)] = handler.messages
    assert (mail_from, rcpt) == ("mairie@example.org", ["voter1@example.org"])
    email = _received(raw)
    assert email["Subject"] == "Élection: votre bureau de vote"
    assert email["From"].addresses[0].display_name == "Mairie de Créteil"
    assert email["Message-ID"] == f"<{message_id}>"
    assert email["X-Sendout-Idempotency-Key"] == "key-1"
    assert email.get_content().replace("\r\n", "\n") == body.replace("\r\n", "\n") + "\n"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_long_line_is_sent_quoted_printable_within_the_line_limit() -> None:
    built = build(_message(body="x" * 5000), allow_8bit=True)
    assert b"Content-Transfer-Encoding: quoted-printable" in built.content
    assert max(len(line) for line in built.content.split(b"\r\n")) <= 998
    assert b"\r\r" not in built.content
    assert _received(built.content).get_content().rstrip("\r\n") == "x" * 5000


@pytest.mark.parametrize(
    ("field_name", "value", "reason"),
    [
        ("subject", "Hi\r\nBcc: x@example.com", "invalid_header"),
        ("sender", "Office\nBcc: x@example.com <o@example.org>", "invalid_header"),
        ("to", "a@example.org\r\nBcc: x@example.com", "invalid_address"),
        ("to", "a@example.org>\r\nRCPT TO:<b@example.org", "invalid_address"),
        ("to", "not an address", "invalid_address"),
        ("idempotency_key", "k>\r\nX: y", "invalid_header"),
        ("idempotency_key", "k y", "invalid_header"),
        ("idempotency_key", "k<y", "invalid_header"),
        ("idempotency_key", "k\x7fy", "invalid_header"),
        ("idempotency_key", "kéy", "invalid_header"),
    ],
)
async def test_a_header_or_envelope_injection_fails_that_message_before_any_connection(
    field_name: str, value: str, reason: str
) -> None:
    # Port 9 (discard) is never dialled: the message is refused before the connection.
    provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", 9, timeout=1), connections=1)
    with pytest.raises(PermanentProviderError, match=reason):
        await provider.send(_message(**{field_name: value}))


async def test_refusals_map_5xx_permanent_4xx_retryable_and_the_session_goes_on() -> None:
    handler = Handler(refuse={"gone@example.org": "550 5.1.1 mailbox unavailable",
                              "busy@example.org": "451 4.3.0 try again later"})
    async with running(handler) as server:
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=1)
        with pytest.raises(PermanentProviderError, match="550"):
            await provider.send(_message(to="gone@example.org"))
        with pytest.raises(RetryableProviderError, match="451"):
            await provider.send(_message(to="busy@example.org"))
        await provider.send(_message(2))
        await provider.close()
    assert [rcpt for _, rcpt, _ in handler.messages] == [["voter2@example.org"]]
    assert len(server.protocols) == 1


async def test_a_session_closed_by_the_server_while_idle_is_reopened_for_the_next_message(
) -> None:
    handler = Handler()
    async with running(handler) as server:
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=1)
        await provider.send(_message(1))
        server.drop_connections()
        await asyncio.sleep(0.05)
        await provider.send(_message(2))
        await provider.close()
    assert len(handler.messages) == 2 and len(server.protocols) == 2


async def test_a_server_that_is_down_is_a_retryable_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port, timeout=2), connections=1)
    with pytest.raises(RetryableProviderError, match="connect"):
        await provider.send(_message())


async def test_a_server_that_stops_answering_is_a_retryable_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port, timeout=0.3), connections=1)
    with pytest.raises(RetryableProviderError, match="Timeout"):
        await provider.send(_message())
    server.close()


@pytest.fixture(scope="module")
def tls_files() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        yield cert, key


async def test_starttls_and_auth_when_configured(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)

    handler = Handler()
    async with running(handler, tls_context=server_tls, require_starttls=True,
                       authenticator=authenticator, auth_require_tls=True) as server:
        options = SmtpOptions("127.0.0.1", server.port, starttls=True, username="office",
                              password="s3cret", tls_context=client_tls)
        provider = LeanSmtpProvider(options, connections=1)
        await provider.send(_message(1))
        await provider.send(_message(2))
        await provider.close()
        wrong = LeanSmtpProvider(
            SmtpOptions("127.0.0.1", server.port, starttls=True, username="office",
                        password="nope", tls_context=client_tls), connections=1)
        with pytest.raises(RetryableProviderError, match="535"):
            await wrong.send(_message(3))
        plain = LeanSmtpProvider(SmtpOptions("127.0.0.1", server.port), connections=1)
        with pytest.raises(RetryableProviderError, match="530"):  # STARTTLS first: config
            await plain.send(_message(4))
    assert len(handler.messages) == 2
    assert logins[0] == (b"office", b"s3cret")
    assert handler.over_tls == [True, True]


# --- Postfix's smtp-sink ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_sink(*args: str) -> Iterator[tuple[int, Path]]:
    if not os.path.exists(SMTP_SINK):
        # ./sendout test installs it; in CI its absence is a failure, never a skip.
        if os.environ.get("CI") == "true":
            pytest.fail("Postfix's smtp-sink is not installed (apt-get install postfix)")
        pytest.skip("Postfix's smtp-sink is not installed (apt-get install postfix)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # smtp-sink drops to `nobody` when run as root
        dump = Path(tmp) / "dump"
        port = _free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([SMTP_SINK, *user, "-D", str(dump), *args,
                                 f"127.0.0.1:{port}", "64"])
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                import time
                time.sleep(0.05)
            yield port, dump
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)


async def test_every_message_reaches_smtp_sink_once_over_pipelined_sessions() -> None:
    with smtp_sink() as (port, dump):
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port), connections=8)
        ids = await asyncio.gather(*(provider.send(_message(n)) for n in range(400)))
        await provider.close()
        await asyncio.sleep(0.2)
        keys = [line.split(b":", 1)[1].strip() for line in dump.read_bytes().splitlines()
                if line.startswith(b"X-Sendout-Idempotency-Key:")]
    assert len(set(ids)) == 400
    assert sorted(keys) == sorted(f"key-{n}".encode() for n in range(400))


@pytest.mark.parametrize(("flag", "error"), [("-f", PermanentProviderError),
                                             ("-r", RetryableProviderError)])
async def test_smtp_sink_refusing_rcpt_maps_hard_permanent_soft_retryable(
    flag: str, error: type[Exception]
) -> None:
    # -f / -r imply no PIPELINING: the classic dialogue is covered too.
    with smtp_sink(flag, "RCPT") as (port, dump):
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port), connections=1)
        for n in range(3):
            with pytest.raises(error):
                await provider.send(_message(n))
        await provider.close()
        assert not dump.exists() or b"X-Sendout" not in dump.read_bytes()


async def test_smtp_sink_closing_with_421_after_data_is_retryable_then_reconnects() -> None:
    with smtp_sink("-Q", ".") as (port, _):
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port), connections=1)
        for n in range(3):
            with pytest.raises(RetryableProviderError, match="421"):
                await provider.send(_message(n))
        await provider.close()


async def test_a_refusal_stays_permanent_when_the_server_then_hangs_up_on_rset() -> None:
    with smtp_sink("-f", "RCPT", "-q", "RSET") as (port, _):
        provider = LeanSmtpProvider(SmtpOptions("127.0.0.1", port), connections=1)
        for n in range(3):
            with pytest.raises(PermanentProviderError, match="5"):
                await provider.send(_message(n))
        await provider.close()


# --- addresses: the plain-address fast path agrees with email.utils.parseaddr ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from services.dispatcher.providers import smtp as smtp_module  # noqa: E402


def _outcome(value: str, field: str, parse: Any) -> Any:
    try:
        return parse(value, field)
    except PermanentProviderError as exc:
        return str(exc)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="ab.@-+_'!x1Z`{|}~=?^#$%&*/ <>\"(),;:\\é", min_size=1, max_size=14),
       st.sampled_from(["address", "sender"]))
def test_the_plain_address_fast_path_answers_what_parseaddr_answers(value: str, field: str) -> None:
    assert (_outcome(value, field, smtp_module._address)
            == _outcome(value, field, smtp_module._parsed_address))


def test_plain_addresses_take_the_fast_path_and_named_ones_are_parsed() -> None:
    assert smtp_module._address("voter.1+x@example.org", "address") == (
        "", "voter.1+x@example.org")
    assert smtp_module._address("Election Office <office@example.org>", "sender") == (
        "Election Office", "office@example.org")
