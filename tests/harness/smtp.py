"""A real SMTP server (aiosmtpd) on a free loopback port, for tests that send mail."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A loopback TCP port nothing listens on (aiosmtpd's start() cannot use port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def smtp_server(handler: Any) -> Iterator[int]:
    """Serve ``handler`` (aiosmtpd ``handle_*`` hooks) on 127.0.0.1; yields its port."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()
