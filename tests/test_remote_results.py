"""The results file of a queued job's task: records a reader can trust after a real SIGKILL mid-write."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from wfl_like.autoparallelize.remote.results import RESULTS_NAME, ItemRecord, ResultsWriter, encode, read_results

WAIT_S = 60


def _writer_process(task_dir, body):
    """A real Python process that writes into ``task_dir`` with ``body`` and says "ready" once there."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from wfl_like.autoparallelize.remote.results import ItemRecord, ResultsWriter, encode
        task_dir = {str(task_dir)!r}
    """) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _kill_when_ready(process):
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=WAIT_S) == -signal.SIGKILL


def test_records_round_trip(tmp_path):
    with ResultsWriter(tmp_path) as writer:
        writer.append(ItemRecord(4, True, "1\nLattice=...\nCu 0 0 0\n", file_i=1, count=1))
        writer.append(ItemRecord(5, False, reason="ValueError: bad ünïcode\nsecond line"))
        writer.append(ItemRecord(6, True))
        writer.finish(3)
    results = read_results(tmp_path)
    assert results.done
    assert results.records == [ItemRecord(4, True, "1\nLattice=...\nCu 0 0 0\n", 1, 1),
                               ItemRecord(5, False, reason="ValueError: bad ünïcode\nsecond line"),
                               ItemRecord(6, True)]
    assert (tmp_path / RESULTS_NAME).read_bytes().isascii()
    assert read_results(tmp_path / "nowhere").records == []


def test_a_torn_record_after_sigkill_is_ignored_then_cut_off_by_the_next_writer(tmp_path):
    # the writer dies with half a record on disk: what a kill in the middle of write() leaves
    process = _writer_process(tmp_path, """
        with ResultsWriter(task_dir) as writer:
            for i in range(3):
                writer.append(ItemRecord(i, True, f"text {i}", count=1))
            line = encode(ItemRecord(3, True, "x" * 10000, count=1).as_json())
            fd = os.open(os.path.join(task_dir, "results"), os.O_WRONLY | os.O_APPEND)
            os.write(fd, line[:len(line) // 2])
            os.fsync(fd)
            print("ready", flush=True)
            time.sleep(600)
    """)
    _kill_when_ready(process)

    results = read_results(tmp_path)
    assert [r.index for r in results.records] == [0, 1, 2] and not results.done
    assert (tmp_path / RESULTS_NAME).stat().st_size > results.end

    with ResultsWriter(tmp_path) as writer:
        assert writer.done_before == {0, 1, 2}
        writer.append(ItemRecord(3, True, "text 3", count=1))
        writer.finish(4)
    results = read_results(tmp_path)
    assert [r.index for r in results.records] == [0, 1, 2, 3] and results.done
    assert results.end == (tmp_path / RESULTS_NAME).stat().st_size


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_at_any_moment_of_a_writing_loop_leaves_only_whole_records(tmp_path, attempt):
    # records of a megabyte each, written as fast as they go: the kill lands wherever it lands
    process = _writer_process(tmp_path, f"""
        with ResultsWriter(task_dir) as writer:
            for i in range(100000):
                writer.append(ItemRecord(i, True, str(i % 10) * 1_000_000, count=1))
                if i == {attempt + 1}:
                    print("ready", flush=True)
    """)
    _kill_when_ready(process)

    data = (tmp_path / RESULTS_NAME).read_bytes()
    results = read_results(tmp_path)
    assert len(results.records) == data.count(b"\n") >= attempt + 2
    for i, record in enumerate(results.records):
        assert record == ItemRecord(i, True, str(i % 10) * 1_000_000, count=1)


def test_damage_before_the_last_line_is_refused_naming_the_file_and_line(tmp_path):
    with ResultsWriter(tmp_path) as writer:
        for i in range(3):
            writer.append(ItemRecord(i, True, f"text {i}"))
    path = tmp_path / RESULTS_NAME
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"text 1", b"text 7")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"file .*results.* line 2 is damaged"):
        read_results(tmp_path)


def test_a_checksummed_line_that_is_not_a_record_is_refused(tmp_path):
    (tmp_path / RESULTS_NAME).write_bytes(encode({"kind": "item", "index": 0}) + encode({"kind": "done"}))
    with pytest.raises(ValueError, match="line 1 is not an item record"):
        read_results(tmp_path)


def test_each_record_is_readable_as_soon_as_append_returns(tmp_path):
    # what another process sees at once, without the writer closing: the shared filesystem's view
    with ResultsWriter(tmp_path) as writer:
        writer.append(ItemRecord(0, True, "a"))
        assert [r.index for r in read_results(tmp_path).records] == [0]
        assert os.path.getsize(tmp_path / RESULTS_NAME) == read_results(tmp_path).end
