"""Image URLs in requests, fetched only when the server is started with ``--fetch-images``.

A server that fetches any URL a request names works for whoever can reach it: it can be
made to read cloud metadata endpoints (169.254.169.254), admin pages on the loopback
interface or hosts behind the firewall (server-side request forgery). So fetching is off
by default, and when on: only http(s); every hop's host is resolved and each address must
be a public one (``--fetch-images-allow HOST`` names hosts of your own network to let
through); the connection goes to the address that was checked, not to a second lookup
that DNS could answer differently; at most a few redirects, each checked again; one
deadline for the whole fetch; and the body is cut off past the image size limit.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .._defaults import DEFAULTS
from .._errors import ConfigError
from .._types import ImagePart, Message

REDIRECTS = (301, 302, 303, 307, 308)


def fetch_image(url: str, *, allow_hosts: Sequence[str] = (),
                max_bytes: int = DEFAULTS.max_image_bytes,
                timeout_s: float = DEFAULTS.fetch_image_timeout_s,
                max_redirects: int = DEFAULTS.fetch_image_redirects) -> bytes:
    """The bytes at ``url``, under the rules above; ``ConfigError`` (a 400) otherwise."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"image URL {url[:80]!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError("image URLs with credentials are not fetched")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        address = checked_address(parts.hostname, port, allow_hosts)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConfigError(f"fetching the image at {url[:80]} took over {timeout_s:g} s")
        conn = _Pinned(address, parts.hostname, port, https, remaining)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"Accept": "image/*",
                                               "User-Agent": "localllm-image-fetch"})
            response = conn.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise ConfigError(f"the image URL {url[:80]} redirects nowhere")
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise ConfigError(f"the image URL {url[:80]} answered HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ConfigError(f"the image at {url[:80]} is {declared} bytes; the limit "
                                  f"is {max_bytes}")
            return _read_capped(conn, response, max_bytes, deadline, url)
        except (OSError, http.client.HTTPException) as exc:
            raise ConfigError(f"could not fetch the image at {url[:80]}: {exc}") from None
        finally:
            conn.close()
    raise ConfigError(f"the image URL redirected more than {max_redirects} times")


def checked_address(host: str, port: int, allow_hosts: Sequence[str] = ()) -> str:
    """The address to connect to for ``host``: every address it resolves to must be
    public, unless the host (or that address) is allowed by name."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"the image host {host!r} does not resolve: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise ConfigError(f"the image host {host!r} has no address")
    for address in addresses:
        if host in allow_hosts or address in allow_hosts:
            continue
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise ConfigError(
                f"the image host {host!r} is {address}, not a public address; the server "
                "does not fetch from loopback, private or link-local addresses (start it "
                "with --fetch-images-allow HOST to let a host of your own network through)")
    return addresses[0]


def _read_capped(conn: Any, response: Any, max_bytes: int, deadline: float,
                 url: str) -> bytes:
    """The body, as it arrives, cut off past ``max_bytes`` or the deadline (a host that
    trickles a byte at a time must not hold the request)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(f"fetching the image at {url[:80]} took too long")
        if conn.sock is not None:
            conn.sock.settimeout(left)
        chunk = response.read1(min(65536, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ConfigError(f"the image at {url[:80]} is over the {max_bytes}-byte limit")
        chunks.append(chunk)


class _Pinned(http.client.HTTPSConnection):
    """An HTTP(S) connection to an address checked beforehand; TLS still verifies the
    certificate against the host name."""

    def __init__(self, address: str, host: str, port: int, https: bool,
                 timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address, self._https = address, https

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        if self._https:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def fetch_message_images(messages: Sequence[Message], allow_hosts: Sequence[str]
                         ) -> tuple[Message, ...] | None:
    """The messages with each URL image part replaced by its fetched bytes (None when
    there is none to fetch)."""
    if not any(p.url for m in messages for p in m.images):
        return None
    out = []
    for message in messages:
        if not any(p.url for p in message.images):
            out.append(message)
            continue
        assert isinstance(message.content, tuple)
        parts = tuple(ImagePart(data=fetch_image(p.url, allow_hosts=allow_hosts))
                      if isinstance(p, ImagePart) and p.url else p for p in message.content)
        out.append(message.model_copy(update={"content": parts}))
    return tuple(out)
