"""Unit tests of the runner wire protocol: the request, runner frames, Docker's demuxing."""

from __future__ import annotations

import struct

import pytest

from orchestrator.backends.protocol import (
    FRAME_BEGIN,
    FRAME_EXIT,
    FRAME_FAILURE,
    FRAME_READY,
    FRAME_STDERR,
    FRAME_STDOUT,
    MAX_FRAME,
    PROTOCOL,
    DockerDemuxer,
    Frame,
    FrameDecoder,
    ProtocolError,
    encode_request,
    new_nonce,
    session_nonce,
    siphash24,
)
from orchestrator.backends.reader import RunReader
from orchestrator.context import ExecutionContext
from orchestrator.errors import SandboxFailedError


def frame(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack(">I", len(payload)) + payload


def block(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


FRAMES = [
    Frame(FRAME_READY, b""),
    Frame(FRAME_BEGIN, b""),
    Frame(FRAME_STDOUT, b"hello\n"),
    Frame(FRAME_STDERR, b"oops \xc3\xa9\n"),
    Frame(FRAME_EXIT, b'{"exit_code": 0}'),
]
STREAM = b"".join(frame(f.kind, f.payload) for f in FRAMES)
BLOCKS = [(1, STREAM[:7]), (2, b"runner: warning\n"), (1, STREAM[7:]), (1, b"")]
MUXED = b"".join(block(stream, payload) for stream, payload in BLOCKS)


# --------------------------------------------------------------------------- request


def test_encode_request_is_a_header_line_then_code_then_blob() -> None:
    """The request is 'ATHENA/3 <code> <blob> <install> <files> <timeout ms> <max out> <files
    cap> <flags> <nonce>\\n', then the code, the blob, the install command line and the files."""
    code = "print('é')".encode()
    request = encode_request(
        code, b'{"n": 1}', 30000, 1048576, "ab12", b"2 1\nabX", 4096, 1, b"npm\x00"
    )
    assert request == (
        b"ATHENA/3 11 8 4 7 30000 1048576 4096 1 ab12\nprint('\xc3\xa9'){\"n\": 1}npm\x002 1\nabX"
    )
    assert PROTOCOL == "ATHENA/3"


def test_encode_request_counts_bytes_of_binary_code() -> None:
    """Lengths count bytes, so code holding newlines or NUL cannot shift the blob."""
    request = encode_request(b"a\n\x00b", b"", 1, 1024, "ab12")
    assert request == b"ATHENA/3 4 0 0 0 1 1024 0 0 ab12\na\n\x00b"


# --------------------------------------------------------------------------- frames


def test_frame_decoder_decodes_a_whole_stream() -> None:
    """Bytes holding several whole frames give every frame, in order, with nothing pending."""
    decoder = FrameDecoder()
    assert decoder.feed(STREAM) == FRAMES
    assert decoder.pending == 0


def test_frame_decoder_decodes_byte_by_byte() -> None:
    """Feeding one byte at a time gives the same frames, each when its last byte arrives."""
    decoder = FrameDecoder()
    got: list[Frame] = []
    for index in range(len(STREAM)):
        got += decoder.feed(STREAM[index : index + 1])
    assert got == FRAMES
    assert decoder.pending == 0


def test_frame_decoder_keeps_a_split_frame_pending() -> None:
    """A frame split across feeds is held (and counted in pending) until it is whole."""
    decoder = FrameDecoder()
    whole = frame(FRAME_STDOUT, b"0123456789")
    assert decoder.feed(whole[:3]) == []
    assert decoder.pending == 3
    assert decoder.feed(whole[3:9]) == []
    assert decoder.pending == 9
    assert decoder.feed(whole[9:] + whole[:1]) == [Frame(FRAME_STDOUT, b"0123456789")]
    assert decoder.pending == 1


def test_frame_decoder_refuses_an_unknown_frame_type() -> None:
    """A frame type the runner never sends raises ProtocolError."""
    with pytest.raises(ProtocolError, match="unexpected frame b'Z'"):
        FrameDecoder().feed(frame(b"Z", b"x"))


def test_frame_decoder_refuses_an_impossible_length() -> None:
    """A length above MAX_FRAME raises ProtocolError at once, without waiting for the bytes."""
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(FRAME_STDOUT + struct.pack(">I", MAX_FRAME + 1))


def test_frame_json_decodes_objects_only() -> None:
    """Frame.json gives a dict and refuses a JSON payload that is not an object."""
    assert Frame(FRAME_EXIT, b'{"exit_code": 3}').json() == {"exit_code": 3}
    with pytest.raises(ProtocolError, match="not a JSON object"):
        Frame(FRAME_EXIT, b"[1, 2]").json()


# --------------------------------------------------------------------------- docker stream


def test_demuxer_decodes_a_whole_stream() -> None:
    """A whole attach stream gives each (stream id, payload) block in order."""
    demuxer = DockerDemuxer()
    assert demuxer.feed(MUXED) == BLOCKS
    assert (DockerDemuxer.STDOUT, DockerDemuxer.STDERR) == (1, 2)


def test_demuxer_decodes_byte_by_byte() -> None:
    """Feeding one byte at a time, split headers included, gives the same blocks."""
    demuxer = DockerDemuxer()
    got: list[tuple[int, bytes]] = []
    for index in range(len(MUXED)):
        got += demuxer.feed(MUXED[index : index + 1])
    assert got == BLOCKS


def test_demuxer_holds_a_split_header_and_payload() -> None:
    """A header or payload split across feeds yields nothing until the block is whole."""
    demuxer = DockerDemuxer()
    whole = block(2, b"abcdef")
    assert demuxer.feed(whole[:5]) == []
    assert demuxer.feed(whole[5:10]) == []
    assert demuxer.feed(whole[10:]) == [(2, b"abcdef")]


def test_demuxer_refuses_an_unknown_stream_id() -> None:
    """A header whose stream id is not 0, 1 or 2 raises ProtocolError."""
    with pytest.raises(ProtocolError, match="stream id 3"):
        DockerDemuxer().feed(block(3, b"x"))


def test_demuxed_payloads_reassemble_runner_frames() -> None:
    """Runner frames split across Docker blocks decode whole once the stdout blocks are joined."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for stream, payload in DockerDemuxer().feed(MUXED):
        if stream == DockerDemuxer.STDOUT:
            frames += decoder.feed(payload)
    assert frames == FRAMES


# --------------------------------------------------------------------------- exit reports


def test_an_exit_frame_without_the_run_nonce_is_counted_and_ignored() -> None:
    """Only the exit frame carrying the request's nonce ends the run; others were forged."""
    context = ExecutionContext(capture_io=False, max_output_bytes=1024)
    reader = RunReader(context, "abc", nonce="n0nce")
    forged = frame(FRAME_EXIT, b'{"exit_code": 0}') + frame(FRAME_EXIT, b'{"nonce": "guess"}')
    real = frame(FRAME_EXIT, b'{"exit_code": 3, "nonce": "n0nce"}')
    reader.take(block(1, forged))
    assert reader.exit_info is None and reader.forged_reports == 2
    reader.take(block(1, real))
    assert reader.exit_info == {"exit_code": 3, "nonce": "n0nce"}


def test_new_nonces_are_long_hex_and_fresh() -> None:
    """Each run gets its own 128-bit nonce the runner can echo verbatim."""
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 32 and set(n) <= set("0123456789abcdef") for n in nonces)


def test_a_failure_frame_after_the_start_needs_the_nonce() -> None:
    """Once the code runs, a failure report without the nonce is the code's, and ignored."""
    context = ExecutionContext(capture_io=False, max_output_bytes=1024)
    reader = RunReader(context, "abc", nonce="n0nce")
    reader.take(block(1, frame(FRAME_BEGIN, b"") + frame(FRAME_FAILURE, b"fake: disk on fire")))
    assert reader.forged_reports == 1
    with pytest.raises(SandboxFailedError, match=r"runner failed: poll: EINTR$"):
        reader.take(block(1, frame(FRAME_FAILURE, b"n0nce poll: EINTR")))


def test_a_failure_frame_before_the_start_is_the_runner_s() -> None:
    """Before 'B' no code of the run executes: the runner's own failure needs no nonce."""
    context = ExecutionContext(capture_io=False, max_output_bytes=1024)
    reader = RunReader(context, "abc", nonce="n0nce")
    with pytest.raises(SandboxFailedError, match="bad request header"):
        reader.take(block(1, frame(FRAME_FAILURE, b"bad request header: Protocol error")))


# --------------------------------------------------------------------------- session nonces


def test_siphash_matches_the_reference_vectors() -> None:
    """SipHash-2-4 under key 00..0f gives the reference outputs (empty, one byte, eight bytes)."""
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, b"\x00") == 0x74F839C593DC67FD
    assert siphash24(key, bytes(range(8))) == 0x93F5F5799A932462


def test_session_nonces_differ_per_call_and_per_key() -> None:
    """A session's nonces are 32 hex digits, new for every call, and depend on the key."""
    key, other = bytes(range(16)), bytes(range(1, 17))
    nonces = [session_nonce(key, n) for n in range(100)]
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)
    assert len(set(nonces)) == 100
    assert session_nonce(other, 0) != nonces[0]
    assert session_nonce(key, 0) == nonces[0]
