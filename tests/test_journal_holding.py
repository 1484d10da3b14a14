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
from pathlib import Path

import ase.io
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


def test_held_rows_are_invisible_until_committed_then_all_there(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    try:
        journal.start("call", {"op": "test"})
        journal.hold = True
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
    with Journal(path) as journal:
        journal.start("call", {"op": "test"})
        journal.hold = True
        journal.record(done=done_rows(0, journal_module.HOLD_ITEMS - 1))
        assert journal.holding
        journal.record(done=done_rows(journal_module.HOLD_ITEMS - 1, 1))
        assert not journal.holding
        assert done_on_disk(path) == journal_module.HOLD_ITEMS


def test_closing_commits_what_is_held_and_a_new_run_sees_it(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.start("call", {"op": "test"})
    journal.hold = True
    journal.record(done=done_rows(0, 4))
    journal.close()
    assert done_on_disk(path) == 4
    with Journal(path) as again:
        again.start("call", {"op": "test"})
        found = again.lookup_many(range(4), [f"key{i}" for i in range(4)], n_files=1)
    assert [hit for hit, _, _, _ in found] == [True] * 4


def test_a_serial_run_records_each_chunk_as_it_is_done(tmp_path):
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
