"""gateway.websocket_frames against frames written and read by the
``websockets`` library: the boundary tracker must agree with a real
implementation on where every frame ends, however the bytes are split."""

from __future__ import annotations

import random

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from gateway.websocket_frames import SESSION_ENDED, FrameBoundary, close_frame


def _frames(mask: bool) -> list[bytes]:
    payloads = [b"", b"x", b"y" * 125, b"z" * 126, b"w" * 65535, b"v" * 65536, b"u" * 200_000]
    out = [Frame(Opcode.TEXT, p).serialize(mask=mask) for p in payloads]
    out.append(Frame(Opcode.PING, b"ping").serialize(mask=mask))
    out.append(Frame(Opcode.BINARY, b"part", fin=False).serialize(mask=mask))
    out.append(Frame(Opcode.CONT, b"rest").serialize(mask=mask))
    return out


@pytest.mark.parametrize("mask", [False, True], ids=["server-frames", "client-frames"])
def test_boundaries_match_real_frames_however_the_bytes_are_split(mask: bool) -> None:
    frames = _frames(mask)
    stream = b"".join(frames)
    ends = set()
    position = 0
    for frame in frames:
        position += len(frame)
        ends.add(position)
    rng = random.Random(7)
    for _ in range(20):
        tracker = FrameBoundary()
        position = 0
        while position < len(stream):
            step = rng.choice((1, 2, 3, 7, 100, 70_000))
            piece = stream[position : position + step]
            tracker.feed(piece)
            position += len(piece)
            assert tracker.at_boundary == (position in ends), position
        assert tracker.at_boundary and not tracker.closed


def test_a_close_frame_passing_is_noticed() -> None:
    tracker = FrameBoundary()
    tracker.feed(Frame(Opcode.TEXT, b"bye").serialize(mask=False))
    assert not tracker.closed
    tracker.feed(Frame(Opcode.CLOSE, Close(1000, "done").serialize()).serialize(mask=False))
    assert tracker.closed and tracker.at_boundary


def _parse(data: bytes, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the frame did not parse")


@pytest.mark.parametrize("masked", [False, True], ids=["to-browser", "to-upstream"])
def test_the_gateways_close_frame_is_a_valid_close(masked: bool) -> None:
    frame = _parse(close_frame(SESSION_ENDED, "session ended", masked=masked), masked)
    assert frame.opcode is Opcode.CLOSE
    close = Close.parse(frame.data)
    assert (close.code, close.reason) == (1008, "session ended")
    tracker = FrameBoundary()
    tracker.feed(close_frame(SESSION_ENDED, "x" * 500, masked=masked))  # reason cut to fit
    assert tracker.closed and tracker.at_boundary
