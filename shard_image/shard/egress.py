"""The browsers' egress guard: Chromium sends every connection (pages, redirects, subresources,
WebSockets, service workers) through this small proxy on loopback, which lets one through only
to an allowed host, and never to a loopback, private, link-local or otherwise special address
unless that exact host is listed.

Allowed hosts (shard setting EGRESS_ALLOW, comma-separated; config `shard.egress_allow`): exact
names or addresses, `*.domain` for its subdomains, each with an optional `:port`. The host of
WHATSAPP_URL is always allowed. The proxy resolves names itself and checks the addresses it is
about to connect to, so a listed name that resolves to a private address is refused too
(unless that name is listed exactly with a private address in mind, as tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
WHATSAPP_HOSTS = ("web.whatsapp.com", "*.whatsapp.com", "*.whatsapp.net")
"""What WhatsApp Web loads from (its page, static files, media, its socket)."""
HEAD_LIMIT = 16384
CONNECT_TIMEOUT = 10.0


class Refused(Exception):
    """The guard does not let this connection through; the message names the host."""


@dataclass(frozen=True)
class Policy:
    patterns: tuple[str, ...]

    @classmethod
    def of(cls, allow: str, site_url: str) -> Policy:
        """`allow`'s patterns, and the site of `site_url` (its host and port exactly)."""
        listed = [p.strip().lower() for p in allow.split(",") if p.strip()]
        parts = urlsplit(site_url)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            listed.append(f"{parts.hostname}:{port}")
        return cls(tuple(dict.fromkeys(listed)))

    def check_host(self, host: str, port: int) -> None:
        """Refused unless `host:port` matches a pattern."""
        if self._match(host.lower(), port) is None:
            raise Refused(f"{host}:{port} is not an allowed host ({', '.join(self.patterns)})")

    def check_address(self, host: str, port: int, address: str) -> None:
        """Refused when `address` is special and `host` was not listed exactly."""
        ip = ipaddress.ip_address(address)
        special = not ip.is_global or ip.is_multicast
        if special and self._match(host.lower(), port) != "exact":
            raise Refused(f"{host} resolves to {address}, a private or special address")

    def check_url(self, url: str) -> None:
        """For a URL a client gives (the web driver's `url`): its host must be allowed."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise Refused(f"{url!r} names no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            self.check_host(parts.hostname, port)
        except Refused:
            origin = f"{parts.scheme}://{parts.netloc}"
            raise Refused(
                f"origin {origin} is not allowed for browsers (EGRESS_ALLOW:"
                f" {', '.join(self.patterns)})"
            ) from None

    def _match(self, host: str, port: int) -> str | None:
        for pattern in self.patterns:
            name, _, wanted = (
                pattern.partition(":") if pattern.count(":") == 1 else (pattern, "", "")
            )
            if wanted and wanted != str(port):
                continue
            if name == host:
                return "exact"
            if name.startswith("*.") and host.endswith(name[1:]):
                return "wildcard"
        return None


class Guard:
    """The proxy: one task per connection, refusals answered 403 and logged."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._warned: set[str] = set()
        """Refusals are logged as warnings once per message (Chromium's own background
        requests would repeat them every minute), then at debug level."""
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > HEAD_LIMIT:
                raise Refused("request head too large")
            method, target, rest = _request_line(head)
            host, port, first = _destination(method, target, rest)
            upstream = await self._connect(host, port)
        except Refused as exc:
            new = str(exc) not in self._warned and len(self._warned) < 1000
            self._warned.add(str(exc))
            log.log(logging.WARNING if new else logging.DEBUG, "egress guard: %s", exc)
            await _answer(writer, b"403 Forbidden", f"chatscale egress guard: {exc}")
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            await _answer(writer, b"502 Bad Gateway", "chatscale egress guard: cannot connect")
            return
        up_reader, up_writer = upstream
        if first is None:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.policy.check_host(host, port)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise Refused(f"{host} does not resolve")
        address = str(infos[0][4][0])
        self.policy.check_address(host, port, address)
        return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)


def _request_line(head: bytes) -> tuple[str, str, bytes]:
    line, _, rest = head.partition(b"\r\n")
    method, target, _version = line.decode("latin-1").split(" ", 2)
    return method, target, rest


def _destination(method: str, target: str, rest: bytes) -> tuple[str, int, bytes | None]:
    """Where a request goes, and for plain HTTP the request to send there (origin form, one
    request per connection: a kept-alive proxy connection could name another host next)."""
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port), None
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise Refused(f"{target[:100]!r} is not a proxy request")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [
        h
        for h in rest.split(b"\r\n")
        if h and not h.lower().startswith((b"proxy-", b"connection:", b"keep-alive:"))
    ]
    first = f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(
        [*headers, b"Connection: close"]
    )
    return parts.hostname, parts.port or 80, first + b"\r\n\r\n"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _answer(writer: asyncio.StreamWriter, status: bytes, text: str) -> None:
    body = text.encode()
    writer.write(
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(Exception):
        await writer.drain()
        writer.close()
