"""systemd's sd_notify protocol, in one place (STYLE.md §5).

The service manager hands its socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux
abstract namespace); a message is one datagram of ``KEY=value`` lines (sd_notify(3)). Without
``NOTIFY_SOCKET`` every function here does nothing, so the daemon runs the same from a shell.
A failed send is logged at debug level and never raised: systemd supervision must not be able
to take the reduction down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.5
"""Longest a notification may wait for room in the receiver's queue before it is dropped."""


def _address(value: str) -> str | bytes:
    # sd_notify(3): a leading '@' names a socket in the abstract namespace (leading NUL byte).
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=value`` lines) to ``NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when there is no socket or sending failed
    (logged at debug). ``env`` defaults to ``os.environ``.
    """
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram send blocks while the receiver's queue is full; never hang the
            # supervisor's loop on systemd (or on a test that stopped reading).
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(_address(target))
            sock.sendall(message.encode())
    except OSError as error:
        log.debug("sd_notify to %s failed: %s", target, error)
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment inside the datagram.
    return " ".join(text.split())


def ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """READY=1 (plus STATUS= when given): start-up is finished."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message, env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """STATUS=<text>: the one-line state ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """WATCHDOG=1: the keep-alive for ``WatchdogSec``."""
    return notify("WATCHDOG=1", env=env)


def stopping(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: the service is shutting down."""
    message = "STOPPING=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message, env=env)


def reloading(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC in µs, required by Type=notify-reload
    since systemd 253); READY=1 must follow once the reload is done."""
    message = f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message, env=env)


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1, in seconds: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)
    recommends pinging at half the timeout), or None when the watchdog is off or meant for
    another process (``WATCHDOG_PID`` set to a different pid)."""
    environ = os.environ if env is None else env
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2e6
