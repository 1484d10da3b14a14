"""Chunks found in the journal take no slot: the chunks after them are submitted before the
driver hands the found ones back, so that workers compute while a resumed run stores.  And the
frames read ahead to be looked up in the journal a window at a time go out as without a journal."""

from concurrent.futures import Future

import pytest

from wfl_like.autoparallelize import chunks, supervisor
from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.autoparallelize.frame_items import FrameItem
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


class BrokenInput(Exception):
    """What a truncated input file raises where its bad frame is read."""


def frames_breaking_at(bad):
    """Frames 0, 1, ... of an input file that raises at frame ``bad``."""
    for index in range(bad):
        yield FrameItem(path="in.xyz", start=index, end=index + 1, location=(index,), digest=b"%d" % index)
    raise BrokenInput(f"frame {bad}")


def nothing_found(first, items, rngs):
    return [(f"key {first + i}", False, None) for i in range(len(items))]


@pytest.mark.parametrize("bad", [9, chunks._LOOKUP_WINDOW - 1, chunks._LOOKUP_WINDOW, 2 * chunks._LOOKUP_WINDOW + 5])
def test_a_bad_frame_read_ahead_for_the_journal_stops_the_chunks_where_a_run_without_one_stops(bad):
    def chunks_until_broken(lookup):
        made = []
        with pytest.raises(BrokenInput, match=f"frame {bad}") as raised:
            for part in chunks.make_chunks(frames_breaking_at(bad), 4, lookup=lookup):
                made.append([item.start for item in part.items])
        return made, raised.value

    without, error_without = chunks_until_broken(None)
    looked_up, error_with = chunks_until_broken(nothing_found)
    # every whole chunk before the bad frame went out, then the same error: none of the frames
    # before it is held back by the window it was read into
    assert looked_up == without == [list(range(first, first + 4)) for first in range(0, bad - bad % 4, 4)]
    assert type(error_with) is type(error_without)


class BrokenJournal(Exception):
    """What a journal that cannot be read raises when asked."""


def test_a_journal_that_fails_after_a_bad_frame_was_read_ahead_says_both():
    def failing_lookup(first, items, rngs):
        raise BrokenJournal("the journal cannot be read")

    with pytest.raises(BrokenJournal) as raised:
        list(chunks.make_chunks(frames_breaking_at(9), 4, lookup=failing_lookup))
    assert any("reading the inputs after item 8 failed: BrokenInput: frame 9" in note
               for note in getattr(raised.value, "__notes__", []))
