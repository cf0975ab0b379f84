"""The backlog writer's chunk sizes (edge.sync.deliver): a reader that takes a little per wake-up
costs a copy of about what it takes, not of the whole 256 KiB chunk."""

from __future__ import annotations

from edge.sync.deliver import MIN_WRITE_CHUNK, WRITE_CHUNK, _head, _next_chunk


def test_head_copies_the_first_bytes_and_leaves_the_buffer_resizable():
    buf = bytearray(b"abcdef" * 1000)
    chunk = _head(buf, 4)
    assert chunk == b"abcd" and type(chunk) is bytes
    del buf[:4]  # no view left exported: a resize works
    assert buf[:2] == b"ef"
    assert _head(buf, 10**9) == bytes(buf)


def test_a_partial_write_shrinks_the_next_chunk_to_twice_what_went_out():
    assert _next_chunk(WRITE_CHUNK, WRITE_CHUNK, 40_000) == 80_000
    assert _next_chunk(WRITE_CHUNK, WRITE_CHUNK, 1_000) == MIN_WRITE_CHUNK
    assert _next_chunk(WRITE_CHUNK, WRITE_CHUNK, 0) == MIN_WRITE_CHUNK


def test_whole_writes_grow_the_chunk_back_to_the_cap():
    size = MIN_WRITE_CHUNK
    seen = []
    for _ in range(10):
        size = _next_chunk(size, size, size)
        seen.append(size)
    assert seen[0] == 2 * MIN_WRITE_CHUNK and seen[-1] == WRITE_CHUNK
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False))
    # a short backlog sent whole (fewer bytes than the chunk) also grows it
    assert _next_chunk(MIN_WRITE_CHUNK, 100, 100) == 2 * MIN_WRITE_CHUNK
