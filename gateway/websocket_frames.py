"""Where WebSocket frames end in a relayed byte stream (RFC 6455 5.2), and the
close frame the gateway sends when a session ends.

The reverse proxy relays WebSocket bytes unchanged: the endpoints frame and
unframe.  To end a relayed WebSocket politely - a close frame with code 1008
and the reason, so the console can send the person to sign in again instead of
reconnecting blindly - the gateway must not cut into a frame on its way.
:class:`FrameBoundary` reads only frame headers (for their lengths and
opcodes), never payloads, and says whether the stream stands between frames
and whether a close frame has already passed.
"""

from __future__ import annotations

import os

__all__ = ["SESSION_ENDED", "FrameBoundary", "close_frame"]

SESSION_ENDED = 1008  # "policy violation": the session behind it has ended
_CLOSE = 0x8


class FrameBoundary:
    """Feed it the bytes of one direction as they pass."""

    __slots__ = ("_head", "_left", "closed")

    def __init__(self) -> None:
        self._head = b""  # a frame header read in part
        self._left = 0  # payload bytes of the current frame still to pass
        self.closed = False  # a close frame has passed: nothing more may be sent

    @property
    def at_boundary(self) -> bool:
        return not self._left and not self._head

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            head = self._head
            if len(head) < 2:
                step = min(2 - len(head), n - i)
                head += data[i : i + step]
                i += step
                if len(head) < 2:
                    self._head = head
                    return
            size = _header_size(head[1])
            if len(head) < size:
                step = min(size - len(head), n - i)
                head += data[i : i + step]
                i += step
                if len(head) < size:
                    self._head = head
                    return
            self._head = b""
            self._left = _payload_length(head)
            if head[0] & 0x0F == _CLOSE:
                self.closed = True


def _header_size(second: int) -> int:
    length = second & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


def _payload_length(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A close frame; ``masked`` for frames a client sends (the gateway towards
    the upstream), unmasked towards the browser (RFC 6455 5.1)."""
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((0x80 | _CLOSE, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | _CLOSE, 0x80 | len(payload))) + key + body
