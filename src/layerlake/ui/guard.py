"""Which requests the UI server answers: those addressed to it, from its own pages.

A page on another site cannot read the served warehouse: the browser's same-origin policy keeps it from
reading the answers. Unless it rebinds its own name to this machine's address (DNS rebinding): then
``http://evil.example:8765/api/sql?q=...`` reaches this server with ``Host: evil.example:8765``, and the
page reads the answer as its own. So a request is answered only when

- its ``Host`` names the address served, with the port: ``127.0.0.1``, ``localhost`` or ``[::1]``, or the
  ``--host`` given (listening on every address, ``0.0.0.0`` or ``::``: also this machine's host name, and
  any IP address, which no rebinding page can use: rebinding needs a name it controls);
- an ``Origin`` it carries (a script's request from another page) is this server's own;
- ``Sec-Fetch-Site``, which browsers send with every request, is not ``cross-site``.

Everything else is refused with 403 and a message saying which address to open.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Served:
    """The address a server listens on and the ``Host`` names that reach it."""

    host: str
    port: int
    names: frozenset[str]
    any_ip: bool  # listening on every address: any IP literal is this machine

    @classmethod
    def at(cls, host: str, port: int) -> Served:
        names = {*LOOPBACK_NAMES, _bracketed(host.lower())}
        wildcard = host in WILDCARD_HOSTS
        if wildcard:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return cls(host, port, frozenset(n for n in names if n), wildcard)

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in WILDCARD_HOSTS else _bracketed(self.host)
        return f"http://{shown}:{self.port}/"

    def refusal(self, headers: Iterable[tuple[str, str]]) -> str | None:
        """Why a request with ``headers`` is refused; None when it is answered."""
        found: dict[str, list[str]] = {}
        for key, value in headers:
            found.setdefault(key.lower(), []).append(value)
        hosts = found.get("host", [])
        if len(hosts) != 1:
            return f"a request needs exactly one Host header, this one has {len(hosts)}"
        if not self.allows(hosts[0]):
            return f"Host {hosts[0]!r} is not the address this server serves"
        for origin in found.get("origin", []):
            if not self.allows_origin(origin):
                return f"a page of another site ({origin!r}) may not use this server"
        if any(v.strip().lower() == "cross-site" for v in found.get("sec-fetch-site", [])):
            return "a request from a page of another site (Sec-Fetch-Site: cross-site) is refused"
        return None

    def allows(self, host: str) -> bool:
        """True when the ``Host`` value ``host`` (``name[:port]``) names this server."""
        name, port = _split_host(host.strip().lower())
        if name is None or port != self.port:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def allows_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin.strip())
        except ValueError:
            return False
        if parts.scheme != "http" or parts.path not in ("", "/") or parts.query or parts.username:
            return False  # "null" (a sandboxed or file page) has no scheme
        netloc = parts.netloc if ":" in parts.netloc.rsplit("]", 1)[-1] else f"{parts.netloc}:80"
        return self.allows(netloc)


def _split_host(value: str) -> tuple[str | None, int | None]:
    """``("name", port)`` of a ``Host`` value; the port is 80 when absent; ``(None, None)`` if malformed."""
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None, None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None, None
        port_text = rest[1:] if rest else "80"
    else:
        name, _, port_text = value.partition(":")
        port_text = port_text if ":" in value else "80"
    if not name or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        return None, None
    return name, int(port_text)


def _bracketed(host: str) -> str:
    """An IPv6 literal as a ``Host`` names it (``[::1]``); anything else as it is."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False
