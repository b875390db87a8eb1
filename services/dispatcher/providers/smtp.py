"""A lean SMTP client for the dispatcher: a pool of kept-open sessions, ESMTP PIPELINING.

aiosmtplib spent most of a message's CPU on its own machinery (an `EmailMessage` built and
flattened per message, a task and a lock per command, one round trip per command), which
bounded the SMTP send-out at about 1,100 emails/s on two cores. This does the part a mass
send-out needs and nothing else:
- each message's bytes are built once, by hand (headers, quoted-printable where needed,
  dot-stuffing), without `email.message`;
- with PIPELINING (RFC 2920) offered, MAIL FROM, RCPT TO and DATA go in one write and their
  three replies are read together; the content with its final dot is a second write: two round
  trips per message instead of four (without PIPELINING, one command per round trip);
- sessions stay open and are reused; one that failed (connection lost, timeout, an answer out
  of step) is closed and the next message opens a new one;
- STARTTLS and AUTH (PLAIN, LOGIN) when configured, once per session.

Errors per message: 5xx → permanent, 4xx and connection errors → retryable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache
from typing import NamedTuple

from services.dispatcher.providers.base import (
    OutgoingMessage,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
    check_header_safe,
)
from shared.reasons import FailReason

_MAX_LINE = 998  # RFC 5322: octets per line, CRLF excluded
_MAX_REPLY_LINE = 4096


class Reply(NamedTuple):
    code: int
    text: str


class SmtpReplyError(Exception):
    """The server refused a command of this message's transaction."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"SMTP {reply.code}: {reply.text}")
        self.reply = reply


class SmtpConnectionError(Exception):
    """The session cannot go on: connection lost, refused, or the server out of step."""


class _Wire(asyncio.Protocol):
    """The byte stream of one session: writes, and complete replies in arrival order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio types the argument as a BaseTransport; a stream connection's can write.
        self.transport = transport  # type: ignore[assignment]
        # Kept: asking for the running loop is a system call (getpid) per reply.
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Each write waits for its reply: Nagle's algorithm would make it sit out a delayed
            # ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = exc
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(f"not an SMTP reply: {line[:100]!r}")
                return
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                self._replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        del buffer[:start]
        if len(buffer) > _MAX_REPLY_LINE:
            self._fail("reply line too long")
            return
        if self._replies:
            self._wake()

    def _fail(self, why: str) -> None:
        self._lost = SmtpConnectionError(why)
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise SmtpConnectionError("connection closed")
        self.transport.write(data)

    async def reply(self) -> Reply:
        while not self._replies:
            if self.closed:
                raise SmtpConnectionError(f"connection closed: {self._lost or 'by the server'}")
            loop = self._loop or asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake()


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int
    timeout: float = 30.0
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    # Implicit TLS from the first byte (port 465), instead of STARTTLS.
    use_tls: bool = False
    # The name we greet with (EHLO).
    local_hostname: str = "sendout.local"
    # Off: one command per round trip even where the server offers PIPELINING.
    pipelining: bool = True
    tls_context: ssl.SSLContext | None = None


class Session:
    """One SMTP session, one transaction at a time."""

    def __init__(self, options: SmtpOptions) -> None:
        self._options = options
        self._wire = _Wire()
        self.extensions: dict[str, str] = {}
        self.pipelining = False
        self.eight_bit = False
        self.smtputf8 = False
        # Whether a transaction's content went out: after that, a lost session leaves the
        # message in doubt (it may have been accepted), so it is not sent again here.
        self.wrote_content = False
        # Between the first command of a transaction and its last reply.
        self.in_transaction = False

    @property
    def usable(self) -> bool:
        return not self._wire.closed

    # complexity: the session's opening: greeting, EHLO, STARTTLS, AUTH, each answer checked
    async def connect(self) -> None:
        o = self._options
        loop = asyncio.get_running_loop()
        context = (o.tls_context or ssl.create_default_context()) if o.use_tls else None
        try:
            await loop.create_connection(lambda: self._wire, o.host, o.port, ssl=context,
                                         server_hostname=o.host if context else None)
        except OSError as exc:
            raise SmtpConnectionError(f"connect to {o.host}:{o.port}: {exc}") from exc
        await self._expect(await self._wire.reply(), 220)
        await self._ehlo()
        if o.starttls and not o.use_tls:
            if "STARTTLS" not in self.extensions:
                raise SmtpConnectionError("STARTTLS configured but not offered by the server")
            self._wire.write(b"STARTTLS\r\n")
            await self._expect(await self._wire.reply(), 220)
            transport = self._wire.transport
            assert transport is not None
            tls = await loop.start_tls(transport, self._wire,
                                       o.tls_context or ssl.create_default_context(),
                                       server_hostname=o.host)
            if tls is None:
                raise SmtpConnectionError("STARTTLS: no TLS transport")
            self._wire.transport = tls
            await self._ehlo()  # RFC 3207: what the server offers may differ under TLS
        if o.username is not None:
            await self._auth(o.username, o.password or "")

    async def _ehlo(self) -> None:
        self._wire.write(f"EHLO {self._options.local_hostname}\r\n".encode())
        reply = await self._wire.reply()
        await self._expect(reply, 250)
        extensions: dict[str, str] = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.strip().partition(" ")
            extensions[keyword.upper()] = params
        self.extensions = extensions
        self.pipelining = self._options.pipelining and "PIPELINING" in extensions
        self.eight_bit = "8BITMIME" in extensions
        self.smtputf8 = "SMTPUTF8" in extensions

    async def _auth(self, username: str, password: str) -> None:
        methods = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in methods:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            self._wire.write(f"AUTH PLAIN {token}\r\n".encode())
            await self._expect(await self._wire.reply(), 235)
        elif "LOGIN" in methods:
            self._wire.write(b"AUTH LOGIN\r\n")
            await self._expect(await self._wire.reply(), 334)
            self._wire.write(base64.b64encode(username.encode()) + b"\r\n")
            await self._expect(await self._wire.reply(), 334)
            self._wire.write(base64.b64encode(password.encode()) + b"\r\n")
            await self._expect(await self._wire.reply(), 235)
        else:
            raise SmtpConnectionError(f"AUTH configured; the server offers {methods or 'none'}")

    async def _expect(self, reply: Reply, code: int) -> None:
        """Outside a transaction, an unexpected answer ends the session."""
        if reply.code != code:
            self.close()
            raise SmtpConnectionError(f"expected {code}, got {reply.code}: {reply.text}")

    async def send(self, envelope_from: bytes, rcpt: bytes, content: bytes) -> Reply:
        """One transaction: `envelope_from` / `rcpt` are the complete MAIL / RCPT command lines,
        `content` the dot-stuffed message ending in CRLF. Raises SmtpReplyError when the server
        refuses the message (the session stays usable), SmtpConnectionError when the session
        cannot go on."""
        wire = self._wire
        self.wrote_content = False
        self.in_transaction = True
        if self.pipelining:
            wire.write(envelope_from + rcpt + b"DATA\r\n")
            mail, to, data = await wire.reply(), await wire.reply(), await wire.reply()
        else:
            wire.write(envelope_from)
            mail = await wire.reply()
            to = data = Reply(503, "not sent")
            if mail.code == 250:
                wire.write(rcpt)
                to = await wire.reply()
                if to.code in (250, 251):
                    wire.write(b"DATA\r\n")
                    data = await wire.reply()
        refused = (mail if mail.code != 250 else to if to.code not in (250, 251)
                   else data if data.code != 354 else None)
        if refused is not None:
            if data.code == 354:
                # The server waits for content of a transaction it refused part of: there is
                # no way to take DATA back but to drop the session.
                self.close()
            else:
                await self._reset()
            self.in_transaction = False
            raise SmtpReplyError(refused)
        self.wrote_content = True
        wire.write(content + b".\r\n")
        done = await wire.reply()
        self.in_transaction = False
        if done.code != 250:
            raise SmtpReplyError(done)
        return done

    async def _reset(self) -> None:
        """After a refused transaction. The refusal is the message's outcome whatever becomes
        of the session: one that does not take RSET is closed."""
        try:
            self._wire.write(b"RSET\r\n")
            reply = await self._wire.reply()
        except SmtpConnectionError:
            self.close()
            return
        if reply.code != 250:
            self.close()

    async def quit(self) -> None:
        if self.usable:
            with contextlib.suppress(SmtpConnectionError, OSError):
                self._wire.write(b"QUIT\r\n")
                async with asyncio.timeout(2):
                    await self._wire.reply()
        self.close()

    def close(self) -> None:
        self._wire.close()


# --- building a message's bytes, once -------------------------------------------------------


@dataclass(frozen=True)
class Built:
    envelope_from: str
    rcpt: str
    content: bytes
    message_id: str
    needs_utf8: bool  # an address that is not ASCII: only to servers offering SMTPUTF8
    eight_bit: bool   # a body sent as 8bit: 8BITMIME on MAIL FROM


class _DateHeader:
    """`Date:` changes once a second; formatting it per message is wasted CPU."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True)
        return self._value


_date = _DateHeader()
_ENVELOPE_FORBIDDEN = frozenset(" \t<>()[],;:\"\\")
# One or more characters from "!" to "~" (33 to 126): what a Message-ID's id may hold.
_PRINTABLE_ASCII = re.compile(r"[!-~]+").fullmatch


# A bare address of these characters (one "@", not at either end) is what `parseaddr` gives
# back unchanged with no display name: most recipients' addresses, parsed without it.
_PLAIN_ADDRESS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-@")


def _address(value: str, field: str) -> tuple[str, str]:
    """(display name, address) of a header value; an address our envelope can carry."""
    if (value.count("@") == 1 and not value.startswith(("@", ".")) and value[-1] != "@"
            and ".." not in value and "@." not in value and ".@" not in value
            and _PLAIN_ADDRESS.issuperset(value)):
        return "", value
    if field == "sender":
        return _sender_address(value)
    return _parsed_address(value, field)


@lru_cache(maxsize=1024)
def _sender_address(value: str) -> tuple[str, str]:
    """A campaign's sender, the same for each of its messages: parsed once."""
    return _parsed_address(value, "sender")


def _parsed_address(value: str, field: str) -> tuple[str, str]:
    name, address = parseaddr(value)
    if (not address or "@" not in address or address.startswith("@") or address.endswith("@")
            or not _ENVELOPE_FORBIDDEN.isdisjoint(address)):
        reason = (FailReason.INVALID_ADDRESS if field == "address"
                      else FailReason.INVALID_HEADER)
        raise PermanentProviderError(f"{reason}: not an email address in the {field}")
    return name, address


def _header_address(name: str, address: str) -> str:
    if not name:
        return address
    return _named_address(name, address)


@lru_cache(maxsize=1024)
def _named_address(name: str, address: str) -> str:
    # Senders, mostly: one per campaign.
    return formataddr((name, address), charset="utf-8")


def _subject(subject: str) -> str:
    if subject.isascii() and len(subject) <= 900:
        return subject
    return Header(subject, "utf-8", maxlinelen=76, header_name="Subject").encode(
        linesep="\r\n")


def build(message: OutgoingMessage, *, allow_8bit: bool) -> Built:
    """The message's envelope and bytes (dot-stuffed, CRLF line ends, without the final dot).
    Raises PermanentProviderError for a value that cannot go into a header."""
    check_header_safe(message)
    key = message.idempotency_key
    if not _PRINTABLE_ASCII(key) or not _ENVELOPE_FORBIDDEN.isdisjoint(key):
        raise PermanentProviderError("invalid_header: idempotency key not fit for a Message-ID")
    sender_name, sender = _address(message.sender, "sender")
    to_name, to = _address(message.to, "address")
    message_id = f"{key}@sendout.local"
    body = message.body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    raw = body.encode()
    short_lines = max(map(len, raw.split(b"\n"))) <= _MAX_LINE
    if raw.isascii() and short_lines:
        encoding, eight_bit = "7bit", False
    elif allow_8bit and short_lines:
        encoding, eight_bit = "8bit", True
    else:
        raw = binascii.b2a_qp(raw, istext=True)
        encoding, eight_bit = "quoted-printable", False
    headers = (
        f"From: {_header_address(sender_name, sender)}\r\n"
        f"To: {_header_address(to_name, to)}\r\n"
        f"Subject: {_subject(message.subject or '')}\r\n"
        f"Date: {_date()}\r\n"
        f"Message-ID: <{message_id}>\r\n"
        f"X-Sendout-Idempotency-Key: {key}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    content = headers.encode() + raw.replace(b"\n", b"\r\n")
    # Dot-stuffing (RFC 5321 4.5.2) over the whole message: headers never start with a dot.
    content = content.replace(b"\r\n.", b"\r\n..")
    return Built(sender, to, content, message_id,
                 needs_utf8=not (sender.isascii() and to.isascii()), eight_bit=eight_bit)


# --- the provider ---------------------------------------------------------------------------


class LeanSmtpProvider:
    """Email over SMTP through `connections` kept-open sessions (see the module's doc).

    The provider message id is the Message-ID we set (stable across retries: a receiving
    system can tell a retry from a new message)."""

    def __init__(self, options: SmtpOptions, *, connections: int) -> None:
        self._options = options
        self._idle: asyncio.LifoQueue[Session | None] = asyncio.LifoQueue()
        for _ in range(connections):
            self._idle.put_nowait(None)  # a slot; connected on first use
        # Whether the server takes 8bit bodies (known once a session is open).
        self._eight_bit = False

    async def send(self, message: OutgoingMessage) -> str:
        built = build(message, allow_8bit=self._eight_bit)
        # The session in use (replaced when one is reopened), for the failure paths.
        current: list[Session | None] = [await self._idle.get()]
        refused: ProviderError | None = None
        try:
            async with asyncio.timeout(self._options.timeout):
                refused = await self._transaction(current, built, message)
        except (SmtpConnectionError, OSError, TimeoutError, ssl.SSLError) as exc:
            session = current[0]
            # Content written and no answer to it: the server may have taken the message.
            in_doubt = session is not None and session.wrote_content
            raise RetryableProviderError(f"SMTP {type(exc).__name__}: {exc}"[:500],
                                         in_doubt=in_doubt) from exc
        finally:
            session = current[0]
            if session is not None and not session.usable:
                session.close()
                session = None
            if refused is None and session is not None and session.in_transaction:
                session.close()  # cancelled or failed mid-transaction: its state is unknown
                session = None
            self._idle.put_nowait(session)
        if refused is not None:
            raise refused
        return built.message_id

    async def _transaction(
        self, current: list[Session | None], built: Built, message: OutgoingMessage
    ) -> ProviderError | None:
        """This message's refusal if any; `current[0]` is the session used, to keep."""
        session = current[0]
        if session is None or not session.usable:
            if session is not None:
                session.close()
            current[0] = None
            current[0] = session = await self._connect()
            return await self._send_on(session, built, message)
        try:
            return await self._send_on(session, built, message)
        except SmtpConnectionError:
            if session.wrote_content:
                raise
        # A kept-open session the server had closed meanwhile (idle timeout) before it took
        # any content: the message goes once on a new session.
        session.close()
        current[0] = None
        current[0] = session = await self._connect()
        return await self._send_on(session, built, message)

    async def _connect(self) -> Session:
        session = Session(self._options)
        try:
            await session.connect()
        except BaseException:
            session.close()
            raise
        self._eight_bit = session.eight_bit
        return session

    async def _send_on(
        self, session: Session, built: Built, message: OutgoingMessage
    ) -> ProviderError | None:
        if built.eight_bit and not session.eight_bit:
            built = build(message, allow_8bit=False)
        if built.needs_utf8 and not session.smtputf8:
            return PermanentProviderError(
                "invalid_address: not ASCII, and the server does not offer SMTPUTF8")
        params = (" SMTPUTF8" if built.needs_utf8 else "") + \
                 (" BODY=8BITMIME" if built.eight_bit else "")
        try:
            await session.send(f"MAIL FROM:<{built.envelope_from}>{params}\r\n".encode(),
                               f"RCPT TO:<{built.rcpt}>\r\n".encode(), built.content)
        except SmtpReplyError as exc:
            if exc.reply.code == 421:  # the server is closing this session
                session.close()
            return _smtp_error(exc.reply)
        return None

    async def close(self) -> None:
        while not self._idle.empty():
            session = self._idle.get_nowait()
            if session is not None:
                await session.quit()


# Refusals that are about our session, not the message: TLS or authentication required or
# refused. A configuration to fix; the messages wait (and the breaker opens) meanwhile.
_SESSION_REFUSALS = frozenset({530, 534, 535, 538})


def _smtp_error(reply: Reply) -> ProviderError:
    reason = f"SMTP {reply.code}: {reply.text}"[:500]
    if 400 <= reply.code < 500 or reply.code in _SESSION_REFUSALS:
        return RetryableProviderError(reason)
    return PermanentProviderError(reason)
