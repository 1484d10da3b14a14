"""The journal holds rows while results stream in, and commits them before anything could lose them.

A run whose results come from worker processes lets the journal hold its rows a moment
and commit them together; these tests check the promises that come with it: a driver
that waits for a slow result has committed everything before it, a run that stops keeps
what it holds, and a run computed in the driver itself holds nothing.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import pytest
from ase import Atoms

from helpers import driver_env, end_process_group, wait_for
from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.resume import journal as journal_module
from wfl_like.autoparallelize.resume import stored
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.configset import RenderedOutput

TESTS_DIR = Path(__file__).parent


def frame_text(i):
    return f"1\nProperties=species:S:1:pos:R:3 label={i}\nH 0.0 0.0 {i}.0\n"


def done_rows(first, n):
    return [(i, f"key{i}", stored.at_location(stored.pack(RenderedOutput(0, frame_text(i), 1)), (i,)))
            for i in range(first, first + n)]


def done_on_disk(path):
    """Items done as another process reading the journal sees them."""
    with Journal(path, read_only=True) as reader:
        return reader.counts()["done"]


def holding_journal(path):
    """A journal of a run under way that may hold its rows, as the driver's is."""
    journal = Journal(path)
    journal.start("call", {"op": "test"})
    journal.hold = True
    return journal


def test_held_rows_are_invisible_until_committed_then_all_there(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = holding_journal(path)
    try:
        journal.record(done=done_rows(0, 3))
        journal.record(done=done_rows(3, 2))
        assert journal.holding
        assert done_on_disk(path) == 0
        assert 0 < journal.commit_due() <= journal_module.HOLD_SECONDS
        assert journal.commit_due(waiting=True) <= journal_module.HOLD_WHILE_WAITING
        journal.commit()
        assert not journal.holding and journal.commit_due() is None
        assert done_on_disk(path) == 5
    finally:
        journal.close()


def test_a_journal_that_may_not_hold_commits_every_record(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        journal.start("call", {"op": "test"})
        journal.record(done=done_rows(0, 2))
        assert not journal.holding
        assert done_on_disk(path) == 2


def test_rows_past_the_item_bound_are_committed_at_once(tmp_path):
    path = tmp_path / "journal.sqlite"
    with holding_journal(path) as journal:
        journal.record(done=done_rows(0, journal_module.HOLD_ITEMS - 1))
        assert journal.holding
        journal.record(done=done_rows(journal_module.HOLD_ITEMS - 1, 1))
        assert not journal.holding
        assert done_on_disk(path) == journal_module.HOLD_ITEMS


def test_closing_commits_what_is_held_and_a_new_run_sees_it(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = holding_journal(path)
    journal.record(done=done_rows(0, 4))
    journal.close()
    assert done_on_disk(path) == 4
    with Journal(path) as again:
        again.start("call", {"op": "test"})
        found = again.lookup_many(range(4), [f"key{i}" for i in range(4)], n_files=1)
    assert [hit for hit, _, _, _ in found] == [True] * 4


@pytest.fixture
def long_holds(monkeypatch):
    """Rows held for as long as the run lasts, unless something commits them: a test then sees
    what commits them, however fast or slow the machine."""
    monkeypatch.setattr(journal_module, "HOLD_SECONDS", 3600.0)
    monkeypatch.setattr(journal_module, "HOLD_WHILE_WAITING", 3600.0)


def test_a_serial_run_records_each_chunk_as_it_is_done(tmp_path, long_holds):
    """In a serial run the driver computes each chunk itself, for as long as it takes: a row held
    meanwhile could wait for hours, so nothing is held."""
    inputs = [Atoms("H", cell=[3, 3, 3], pbc=True, info={"label": i}) for i in range(4)]
    out = tmp_path / "out.xyz"
    seen = []

    def op(items):
        # what another process reading the journal sees when each chunk starts
        seen.append(done_on_disk(journal_path(out)))
        return items

    autoparallelize(op, inputs, OutputSpec(out), autopara_info={"num_python_subprocesses": 0,
                                                                 "num_inputs_per_python_subprocess": 1})
    # a chunk is computed while the one before it waits to be stored (one ahead): each starts
    # with every chunk before that one on disk
    assert all(done >= k - 1 for k, done in enumerate(seen)), seen


class CheckedOutput(OutputSpec):
    """An output that notes, at every write, how many items the journal has on disk then."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.written, self.seen = 0, []

    def store_rendered(self, rendered):
        self.seen.append((self.written + rendered.count, done_on_disk(journal_path(self.paths[0]))))
        super().store_rendered(rendered)
        self.written += rendered.count


def test_no_output_reaches_its_file_before_its_row_is_committed(tmp_path, long_holds):
    inputs = [Atoms("H", cell=[3, 3, 3], pbc=True, info={"label": i}) for i in range(40)]
    out = CheckedOutput(tmp_path / "out.xyz")
    autoparallelize(_identity, inputs, out, autopara_info={"num_python_subprocesses": 2,
                                                             "num_inputs_per_python_subprocess": 1})
    assert out.written == 40 and out.seen
    assert all(on_disk >= written for written, on_disk in out.seen), out.seen


def _identity(items):
    return items


def _fails_in_pairs(items, markers):
    """Fails item 11 whenever it runs with another; alone (the chunk split), notes how many items
    the journal had on disk then."""
    labels = [atoms.info["label"] for atoms in items]
    if len(items) == 1:
        Path(markers, f"alone-{labels[0]}-{done_on_disk(journal_path(Path(markers).parent / 'out.xyz'))}").touch()
    if 11 in labels and len(items) > 1:
        raise ValueError("item 11 fails with a chunk-mate")
    if 9 in labels and len(items) > 1:
        # the chunk before the failing one takes a while, so that the failed one is done (and
        # its failure known) when its turn comes
        time.sleep(1.0)
    return items


def test_rows_held_are_committed_before_a_failed_chunk_runs_again_item_by_item(tmp_path, long_holds):
    markers = tmp_path / "markers"
    markers.mkdir()
    inputs = [Atoms("H", cell=[3, 3, 3], pbc=True, info={"label": i}) for i in range(16)]
    autoparallelize(_fails_in_pairs, inputs, OutputSpec(tmp_path / "out.xyz"), str(markers),
                    autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 2})
    alone = {int(name.split("-")[1]): int(name.split("-")[2]) for name in (p.name for p in markers.iterdir())}
    # the chunk of items 10 and 11 failed, and ran again one by one after the five chunks
    # before it were handed back: their ten items were on disk by then
    assert sorted(alone) == [10, 11]
    assert all(on_disk >= 10 for on_disk in alone.values()), alone


GATED_DRIVER = textwrap.dedent("""
    import os, sys, uuid
    sys.path.insert(0, {tests!r})
    from helpers import wait_for_release
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def op(items, markers, gate, quick):
        for atoms in items:
            open(os.path.join(markers, f"{{atoms.info['label']}}-{{uuid.uuid4().hex}}"), "w").close()
            if atoms.info["label"] >= quick:
                wait_for_release(gate, "slow")
        return items

    if __name__ == "__main__":
        source, out, markers, gate, quick = sys.argv[1:6]
        autoparallelize(op, ConfigSet(source), OutputSpec(out), markers, gate, int(quick),
                        autopara_info={{"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1}})
""")


def test_a_driver_waiting_for_a_slow_result_has_committed_every_result_before_it(tmp_path):
    """Three quick items, then slow ones: while the driver waits, the quick ones are on disk, so a
    kill then (SIGKILL: nothing runs on the way out) loses none of them, and the rerun computes
    only the slow ones."""
    n, quick = 6, 3
    ase.io.write(tmp_path / "in.xyz", [Atoms("H", positions=[[0, 0, i]], info={"label": i}) for i in range(n)],
                 format="extxyz")
    out, markers, gate = tmp_path / "out.xyz", tmp_path / "markers", tmp_path / "gate"
    markers.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(GATED_DRIVER.format(tests=str(TESTS_DIR)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "in.xyz"), str(out), str(markers),
                             str(gate), str(quick)],
                            cwd=tmp_path, env=driver_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: Path(f"{gate}.waiting-slow").exists() or proc.poll() is not None, 120), \
            "no slow item was reached"
        assert proc.poll() is None, proc.stdout.read().decode()
        # no timing is asserted: the wait is only bounded, so that a journal that holds the
        # quick rows for good fails here rather than hanging
        assert wait_for(lambda: done_on_disk(journal_path(out)) == quick, 60), \
            f"{done_on_disk(journal_path(out))} items on disk while the driver waits; {quick} were done"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        end_process_group(proc)
    before = set(markers.iterdir())
    gate.touch()
    # the same driver again (the same operation: the same cache keys), its slow items let through
    rerun = subprocess.run([sys.executable, str(script), str(tmp_path / "in.xyz"), str(out), str(markers),
                            str(gate), str(quick)], cwd=tmp_path, env=driver_env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    again = sorted(int(p.name.split("-")[0]) for p in set(markers.iterdir()) - before)
    assert len(before) >= quick + 1
    assert again == list(range(quick, n))
    assert [atoms.info["label"] for atoms in ase.io.read(out, ":")] == list(range(n))


def test_a_commit_that_fails_keeps_its_rows_for_the_next_try(tmp_path):
    from wfl_like.errors import JournalError

    path = tmp_path / "journal.sqlite"
    journal = holding_journal(path)
    try:
        journal.record(done=done_rows(0, 2))
        # a row the database refuses (no index: NOT NULL), as a full disk would refuse them all
        journal.record(done=[(None, "bad", stored.at_location(stored.pack(RenderedOutput(0, frame_text(9), 1)),
                                                               (9,)))])
        with pytest.raises(JournalError):
            journal.commit()
        assert journal.holding and done_on_disk(path) == 0
    finally:
        journal.close()     # tries again, fails again, and says so rather than raising
    assert done_on_disk(path) == 0
