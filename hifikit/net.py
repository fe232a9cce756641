"""Addresses and ports of the local servers hifikit starts (``hifikit ui``, ``hifikit serve``)."""
from __future__ import annotations

import ipaddress
import socket

from .errors import HifikitError


def is_loopback(host: str) -> bool:
    """True for a name or address only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise HifikitError(f"--host {host}: {exc}") from exc


def check_listen(host: str, port: int) -> int:
    """Bind host:port once and let it go again: a port another process listens on is one clear error
    here, before a server is started. Port 0 picks a free port; the port is returned."""
    if not 0 <= port < 65536:
        raise HifikitError(f"--port {port}: not a port number")
    sock = socket.socket(_family(host, port), socket.SOCK_STREAM)
    # as the servers themselves bind: a port left in TIME_WAIT is free, one with a listener is not
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        return sock.getsockname()[1]
    except OSError as exc:
        raise HifikitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    finally:
        sock.close()


def connect_host(host: str) -> str:
    """The address a client on this machine uses for a server bound to host (a wildcard: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host.strip("[]") == "::":
        return "::1"
    return host


def url(host: str, port: int) -> str:
    h = host.strip("[]")
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"
