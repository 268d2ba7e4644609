"""``host:port`` addresses (the ADARA listener's ``address``, replay and test servers)."""

from __future__ import annotations


def parse_host_port(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), the port from 1 to 65535; the host is what comes before
    the last colon. Raises ValueError naming ``address`` when it is not of that form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected 'host:port' with a port from 1 to 65535, got {address!r}")
    return host, int(port)
