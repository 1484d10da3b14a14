"""Chunks found in the journal take no slot: the chunks after them are submitted before the
driver hands the found ones back, so that workers compute while a resumed run stores."""

from concurrent.futures import Future

from wfl_like.autoparallelize import supervisor
from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.io.renderer import RenderedOutput


def chunk(first, n, cached=None):
    return Chunk(first=first, items=[f"item {i}" for i in range(first, first + n)], locations=[None] * n,
                 rngs=[None] * n, cached=cached)


def test_chunks_after_found_ones_are_submitted_before_the_found_ones_are_handed_back():
    found = [chunk(0, 2, cached=["a", "b"]), chunk(2, 2, cached=["c", "d"])]
    computed = [chunk(4, 2), chunk(6, 2)]
    submitted = {}

    def submit(part, timeout):
        submitted[part.first] = future = Future()
        return future

    results = supervisor.run_in_order(submit, iter(found + computed), slots=1, op_name="op")
    first = next(results)
    assert first.chunk.first == 0 and first.outputs == ["a", "b"]
    # both computed chunks went out (IN_FLIGHT_PER_SLOT per slot), though two found ones come first
    assert sorted(submitted) == [4, 6]
    assert next(results).outputs == ["c", "d"]
    for start, future in submitted.items():
        future.set_result([f"out {start}", f"out {start + 1}"])
    assert [result.outputs for result in results] == [["out 4", "out 5"], ["out 6", "out 7"]]


def test_found_outputs_held_ahead_are_bounded_by_their_size(monkeypatch):
    monkeypatch.setattr(supervisor, "CACHED_AHEAD_BYTES", 10)
    text = RenderedOutput(0, "x" * 8, 1)
    found = [chunk(i, 1, cached=[text]) for i in range(5)]
    read = []

    def reading():
        for part in found + [chunk(5, 1)]:
            read.append(part.first)
            yield part

    results = supervisor.run_in_order(lambda part, timeout: Future(), reading(), slots=1, op_name="op")
    assert next(results).chunk.first == 0
    # 8 bytes held are within the bound, 16 are not: the second found chunk was read, no more
    assert read == [0, 1]
