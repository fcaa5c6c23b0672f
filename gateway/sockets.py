"""Small socket helpers shared by the server side and the upstream client."""

from __future__ import annotations

import os
import socket

__all__ = ["current_pid", "send_all"]


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall`` in one ``send`` when the socket takes it all (the common case
    for a head and a small body): gevent's ``sendall`` asks the kernel for the
    send buffer size on every call, a system call per answer."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's id, kept current across forks (``os.getpid`` is a system
    call, and per-process state is checked on every request)."""
    return _pid
