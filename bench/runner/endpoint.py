"""Network endpoints given on the command line (`scale --rdzv-endpoint`, `run --cluster`): their
syntax, their host, and whether this machine can listen on them, checked before anything starts.

A bad endpoint found here is one line and exit 2 (UsageError) before any directory is made; found
later, it would be a rendezvous or a Ray client waiting silently for minutes.
"""

from __future__ import annotations

import errno
import re
import socket

from bench.errors import UsageError

# HOST:PORT, HOST a name, an IPv4 address or a bracketed IPv6 address.
_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d+)$")


def parse_endpoint(text: str, what: str) -> tuple[str, int]:
    """(host, port) of `text`; UsageError, naming `what` (the flag), unless it is HOST:PORT with a
    port in 1..65535."""
    match = _ENDPOINT.match(text)
    if not match:
        raise UsageError(f"{what} {text!r}: expected HOST:PORT")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise UsageError(f"{what} {text}: the port must be 1..65535, got {port}")
    return match["v6"] or match["host"], port


def resolve(host: str, port: int, what: str) -> list[tuple]:
    """The TCP addresses of host:port (socket.getaddrinfo); UsageError when the host has none."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"{what} {host}:{port}: unknown host {host} ({getattr(exc, 'strerror', exc)})") from None


def check_listenable(host: str, port: int, what: str, local_only: bool) -> None:
    """UsageError unless this machine could listen on host:port now (the rendezvous's host does):
    the host resolved, the port not held by another listener. A host that is not this machine's is
    refused with `local_only` (every rank runs here), else left to the node that owns it."""
    for family, kind, proto, _, address in resolve(host, port, what):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            try:
                sock.bind(address)
                return
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UsageError(f"{what} {host}:{port}: the port is held by another listener; "
                                     "give a free port") from None
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise UsageError(f"{what} {host}:{port}: cannot listen there ({exc.strerror})") from None
    if local_only:
        raise UsageError(f"{what} {host}:{port}: {host} is not an address of this machine, and one node "
                         "runs every rank here")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
