"""Red-team tests of the queued-jobs layer (``remote_info``), on the local Slurm cluster.

Operations live at module level here: jobs import this module (PYTHONPATH through
``env_vars``).  Each output is compared with a serial run of the same call.
"""

import os
import uuid
from pathlib import Path

import ase.io
import pytest

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.autoparallelize.remote.registry import JobRegistry
from wfl_like.autoparallelize.remote.results import encode, read_results
from helpers import cu_cells, queued_remote_info, queued_task_dir

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

# A job that imports this module (as it unpickles its task) may be made slow to do so: it touches
# the file RT_IMPORT_MARK, then sleeps RT_IMPORT_DELAY s (both set through env_vars, in jobs only)
if os.environ.get("WFL_LIKE_IN_QUEUED_JOB") and os.environ.get("RT_IMPORT_DELAY"):
    import time as _time

    if os.environ.get("RT_IMPORT_MARK"):
        Path(os.environ["RT_IMPORT_MARK"]).touch()
    _time.sleep(float(os.environ["RT_IMPORT_DELAY"]))

HERE = Path(__file__).resolve().parent
SERIAL = {"num_python_subprocesses": 0}


def remote(per_job, **options):
    return queued_remote_info(per_job, "wfl_like_rt", 0.2, **options)


def tasks_of(output):
    registry = JobRegistry(output.with_name(f".{output.name}.journal.jobs"))
    try:
        return {number: (list(entry.indices), list(entry.jobs)) for number, entry in registry.tasks.items()}
    finally:
        registry.close()


def mark(items, tag="x"):
    for atoms in items:
        atoms.info["tag"] = tag
    return items


def serial_of(op, in_path, tmp_path, *args, name="serial.xyz", **kwargs):
    out = tmp_path / name
    autoparallelize(op, ConfigSet(in_path), OutputSpec(out), *args, autopara_info=SERIAL, **kwargs)
    return out.read_bytes()


def _collect(op, in_path, out, info, **kwargs):
    return autoparallelize(op, ConfigSet(in_path), OutputSpec(out), autopara_info={"remote_info": info}, **kwargs)


def test_a_rerun_with_duplicate_structures_submits_nothing_again(tmp_path):
    cells = cu_cells(3)
    ase.io.write(tmp_path / "in.xyz", [cells[0], cells[1], cells[0].copy(), cells[2]])
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path)
    out = tmp_path / "out.xyz"
    info = remote(4, wait_for_results=False)
    assert _collect(mark, tmp_path / "in.xyz", out, info) is None        # submitted, not waited for
    submitted = tasks_of(out)
    assert len(submitted) == 1
    _collect(mark, tmp_path / "in.xyz", out, {**info, "wait_for_results": True})
    assert out.read_bytes() == expected
    assert tasks_of(out) == submitted, "an item of the first run's task was submitted again"


def _done_task(tmp_path, op, n, per_job=None):
    """Inputs of ``n`` cells, the serial bytes of ``op``, and a queued call submitted without waiting and
    left to finish: ``(out, info, task_0 directory, expected bytes)``."""
    import time

    ase.io.write(tmp_path / "in.xyz", cu_cells(n))
    expected = serial_of(op, tmp_path / "in.xyz", tmp_path)
    out = tmp_path / "out.xyz"
    info = remote(per_job or n, wait_for_results=False)
    assert _collect(op, tmp_path / "in.xyz", out, info) is None
    state = tmp_path / ".out.xyz.journal.jobs"
    deadline = time.monotonic() + 120
    while not all(read_results(d).done for d in state.glob("task_*")):
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.2)
    return out, info, queued_task_dir(out, 0), expected


def _rewrite_records(task_dir, change):
    """Rewrite the results file with ``change(payloads)``, each line with a valid checksum."""
    from wfl_like.autoparallelize.remote.results import read_lines

    payloads = [payload for _, payload in read_lines(task_dir / "results", "")[0]]
    (task_dir / "results").write_bytes(b"".join(encode(p) for p in change(payloads)))


def _empty_text(payloads):
    return [dict(p, text="") if p.get("index") == 1 else p for p in payloads]


def _two_frames(payloads):
    first = next(p for p in payloads if p.get("index") == 0)
    return [dict(p, text=p["text"] + first["text"]) if p.get("index") == 1 else p for p in payloads]


def _garbage_text(payloads):
    return [dict(p, text="not a frame\n") if p.get("index") == 1 else p for p in payloads]


def _other_item_first(payloads):
    second = next(p for p in payloads if p.get("index") == 1)
    return [dict(second, index=2)] + payloads


@pytest.mark.parametrize("change", [_empty_text, _two_frames, _garbage_text, _other_item_first])
def test_an_ok_record_whose_text_does_not_fit_its_item_is_not_stored(tmp_path, change):
    """A well-formed record (valid checksum) claiming ok, whose text is empty, holds two frames for a count
    of one, is no extended XYZ, or is another item's (a second record of an index before the job's own):
    never stored as it is."""
    out, info, task_dir, expected = _done_task(tmp_path, mark, 3)
    _rewrite_records(task_dir, change)
    try:
        _collect(mark, tmp_path / "in.xyz", out, {**info, "wait_for_results": True, "timeout": 60})
    except Exception:
        assert not out.exists()          # refused: fine, as long as nothing wrong is written
        return
    assert out.read_bytes() == expected


def none_for_odd(items):
    return [None if atoms.info["idx"] % 2 else atoms for atoms in items]


def several(items):
    out = []
    for atoms in items:
        copies = [atoms.copy() for _ in range(atoms.info["idx"] % 3)]
        for k, copy in enumerate(copies):
            copy.info["copy"] = k
        out.append(copies or None)
    return out


def import_missing(items):
    return items


def test_an_overwrite_call_never_takes_records_of_a_job_of_the_call_it_replaced(tmp_path):
    import time

    ase.io.write(tmp_path / "in.xyz", cu_cells(2))
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path, "new")
    out = tmp_path / "out.xyz"
    started = tmp_path / "old_job_unpickling"
    old = remote(2, wait_for_results=False)
    old["env_vars"] = {**old["env_vars"], "RT_IMPORT_DELAY": "4", "RT_IMPORT_MARK": str(started)}
    assert autoparallelize(mark, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out, overwrite=True), "old",
                           autopara_info={"remote_info": old}) is None
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the first job did not start"
        time.sleep(0.05)
    # the old job is loading its task: the same script is run again, with another argument
    new = remote(2)
    new["env_vars"] = {**new["env_vars"], "RT_IMPORT_DELAY": "8"}
    autoparallelize(mark, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out, overwrite=True), "new",
                    autopara_info={"remote_info": new})
    assert [a.info["tag"] for a in ase.io.read(out, ":")] == ["new", "new"]
    assert out.read_bytes() == expected


def test_a_lost_registry_never_lets_a_new_task_take_an_old_task_directorys_records(tmp_path):
    out, info, task_dir, _ = _done_task(tmp_path, mark, 2)        # tag "x", done, not collected
    (task_dir.parent / "jobs").write_bytes(b"")                     # the registry lost (emptied)
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path, "y")
    try:
        autoparallelize(mark, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), "y",
                        autopara_info={"remote_info": {**info, "wait_for_results": True, "timeout": 60}})
    except Exception:
        assert not out.exists()           # refused: fine
        return
    assert [a.info["tag"] for a in ase.io.read(out, ":")] == ["y", "y"]
    assert out.read_bytes() == expected


def test_an_op_module_edited_while_its_job_is_queued_never_gives_the_new_codes_outputs(tmp_path, monkeypatch):
    import importlib
    import sys
    import time

    name = f"rt_edited_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    source = "def tag(items):\n    for atoms in items:\n        atoms.info['tag'] = '{}'\n    return items\n"
    module.write_text(source.format("v1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    op = importlib.import_module(name).tag
    try:
        ase.io.write(tmp_path / "in.xyz", cu_cells(2))
        expected = serial_of(op, tmp_path / "in.xyz", tmp_path)
        out = tmp_path / "out.xyz"
        info = remote(2, wait_for_results=False, header_extra=["--begin=now+3"])
        info["env_vars"] = {**info["env_vars"], "PYTHONPATH": f"{tmp_path}{os.pathsep}{HERE}",
                            "PYTHONDONTWRITEBYTECODE": "1"}
        assert _collect(op, tmp_path / "in.xyz", out, info) is None
        module.write_text(source.format("version2"))        # edited while the job waits in the queue
        state = tmp_path / ".out.xyz.journal.jobs"
        deadline = time.monotonic() + 120
        while not all(read_results(d).done for d in state.glob("task_*")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # collected by the driver that still runs the code it submitted (as a driver that waited would)
        try:
            _collect(op, tmp_path / "in.xyz", out, {**info, "wait_for_results": True, "timeout": 60})
        except Exception:
            assert not out.exists()        # refused: fine
            return
        assert [a.info["tag"] for a in ase.io.read(out, ":")] == ["v1", "v1"]
        assert out.read_bytes() == expected
    finally:
        sys.modules.pop(name, None)


def test_a_task_record_with_too_few_locations_is_a_clear_error_naming_the_registry(tmp_path):
    from wfl_like.autoparallelize.remote.results import read_lines

    out, info, task_dir, _ = _done_task(tmp_path, mark, 2)
    registry = task_dir.parent / "jobs"
    payloads = [payload for _, payload in read_lines(registry, "")[0]]
    for payload in payloads:
        if payload["kind"] == "task":
            payload["locations"] = payload["locations"][:1]
    registry.write_bytes(b"".join(encode(p) for p in payloads))
    with pytest.raises(ValueError, match="jobs"):
        _collect(mark, tmp_path / "in.xyz", out, {**info, "wait_for_results": True, "timeout": 60})


def test_an_infinite_check_interval_is_refused_naming_the_option():
    from wfl_like.autoparallelize.remote.remote_info import RemoteInfo

    with pytest.raises(ValueError, match="check_interval"):
        RemoteInfo.from_autopara({**remote(1), "check_interval": float("inf")}, "module.op")


def empty_list_for_odd(items):
    return [[] if atoms.info["idx"] % 2 else [atoms] for atoms in items]


def info_heavy(items):
    import numpy as np

    for atoms in items:
        atoms.info["f"] = 0.1 + 1e-17 * atoms.info["idx"]
        atoms.info["s"] = 'quote " and \\ back  two  spaces'
        atoms.info["arr"] = np.arange(3) / 7
        atoms.arrays["big"] = np.full(len(atoms), 1e300)
    return items


def slow_mark(items, delay=0.3):
    import time

    for atoms in items:
        time.sleep(delay)
        atoms.info["tag"] = "slow"
    return items


KILLED_DRIVER = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.autoparallelize.remote import queued, registry
import test_redteam_queued as ops

point, info = sys.argv[1], json.loads(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_submit, real_submitted = queued.slurm.submit_array, registry.JobRegistry.submitted
if point == "before_add_task":
    registry.JobRegistry.add_task = lambda self, *a, **k: die()
elif point == "before_sbatch":
    queued.slurm.submit_array = lambda *a, **k: die()
elif point == "after_sbatch":
    queued.slurm.submit_array = lambda *a, **k: (real_submit(*a, **k), die())
elif point == "after_job_recorded":
    registry.JobRegistry.submitted = lambda self, *a, **k: (real_submitted(self, *a, **k), die())
autoparallelize(ops.mark, ConfigSet("in.xyz"), OutputSpec("out.xyz"), autopara_info={{"remote_info": info}})
"""


@pytest.mark.parametrize("point", ["before_add_task", "before_sbatch", "after_sbatch", "after_job_recorded"])
def test_a_driver_killed_around_sbatch_is_rerun_to_the_serial_bytes_with_one_job_per_task(tmp_path, point):
    import json
    import subprocess
    import sys

    ase.io.write(tmp_path / "in.xyz", cu_cells(5))
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path)
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER.format(tests=str(HERE)))
    info = json.dumps(remote(2))
    first = subprocess.run([sys.executable, str(script), point, info], cwd=tmp_path, capture_output=True, timeout=120)
    assert first.returncode == -9, first.stderr
    second = subprocess.run([sys.executable, str(script), "none", info], cwd=tmp_path, capture_output=True,
                            text=True, timeout=200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "out.xyz").read_bytes() == expected
    tasks = tasks_of(tmp_path / "out.xyz")
    assert sorted(i for indices, _ in tasks.values() for i in indices) == list(range(5))
    assert all(len(jobs) == 1 for _, jobs in tasks.values())
    names = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-r", "-n", json.loads(info)["job_name"],
                            "-o", "%F_%K"], capture_output=True, text=True).stdout.split()
    assert len(names) == len(tasks), names           # Slurm knows no job the registry does not


SLOW_SBATCH = """#!/bin/bash
touch {started}
sleep 6
{real} "$@"
touch {finished}
"""


def test_a_driver_killed_during_a_slow_sbatch_is_rerun_without_a_second_job_for_its_tasks(tmp_path):
    import json
    import shutil
    import signal
    import subprocess
    import sys
    import time

    ase.io.write(tmp_path / "in.xyz", cu_cells(2))
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started, finished = tmp_path / "sbatch_started", tmp_path / "sbatch_finished"
    (bin_dir / "sbatch").write_text(SLOW_SBATCH.format(started=started, finished=finished,
                                                       real=shutil.which("sbatch")))
    (bin_dir / "sbatch").chmod(0o755)
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER.format(tests=str(HERE)))
    info = remote(2)
    slow_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen([sys.executable, str(script), "none", json.dumps(info)], cwd=tmp_path, env=slow_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():       # sbatch is running (a busy controller: it takes a while)
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        second = subprocess.run([sys.executable, str(script), "none", json.dumps(info)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=200)
        assert second.returncode == 0, second.stderr[-3000:]
        assert (tmp_path / "out.xyz").read_bytes() == expected
        deadline = time.monotonic() + 60
        while not finished.exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ids = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-n", info["job_name"], "-o", "%F"],
                             capture_output=True, text=True).stdout.split()
        assert len(set(ids)) == 1, f"jobs {sorted(set(ids))} submitted for one task"
    finally:
        subprocess.run(["scancel", "--me", "-n", info["job_name"]], capture_output=True)


def refuse_second(items):
    for atoms in items:
        if atoms.info["idx"] == 1:
            raise ValueError("item 1 refused")
    return items


def test_the_reason_of_an_item_that_raised_in_a_queued_job_names_the_job(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(2))
    out = tmp_path / "out.xyz"
    with pytest.warns(Warning):
        result = autoparallelize(refuse_second, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                                 autopara_info={"remote_info": remote(2), "errors": "skip"})
    ((job_id, array_index),) = tasks_of(out)[0][1]
    (failure,) = result.failures
    assert "item 1 refused" in failure.reason
    assert f"{job_id}_{array_index}" in failure.reason, failure.reason


def test_an_output_in_a_directory_with_a_space_is_computed_as_serially(tmp_path):
    where = tmp_path / "my runs"
    where.mkdir()
    ase.io.write(where / "in.xyz", cu_cells(2))
    expected = serial_of(mark, where / "in.xyz", where)
    _collect(mark, where / "in.xyz", where / "out.xyz", remote(2, retries=0, timeout=60))
    assert (where / "out.xyz").read_bytes() == expected


def test_a_frame_inserted_before_the_others_reuses_the_records_of_the_moved_frames(tmp_path):
    cells = cu_cells(4)
    out, info, _, _ = _done_task(tmp_path, mark, 3)               # frames 0..2 computed, not collected
    ase.io.write(tmp_path / "in.xyz", [cells[3]] + cu_cells(3))   # a new frame first: the others move by one
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path, name="serial_2.xyz")
    _collect(mark, tmp_path / "in.xyz", out, {**info, "wait_for_results": True, "timeout": 60})
    assert out.read_bytes() == expected
    new_tasks = [indices for number, (indices, _) in tasks_of(out).items() if number > 0]
    assert new_tasks == [[0]], f"computed again: {new_tasks}"


def test_wait_for_results_false_with_overwrite_collects_on_the_next_call_without_submitting_again(tmp_path):
    import time

    ase.io.write(tmp_path / "in.xyz", cu_cells(2))
    expected = serial_of(mark, tmp_path / "in.xyz", tmp_path)
    out = tmp_path / "out.xyz"
    info = remote(2, wait_for_results=False)
    assert autoparallelize(mark, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out, overwrite=True),
                           autopara_info={"remote_info": info}) is None
    first = tasks_of(out)
    state = tmp_path / ".out.xyz.journal.jobs"
    deadline = time.monotonic() + 120
    while not all(read_results(d).done for d in state.glob("task_*")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    result = autoparallelize(mark, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out, overwrite=True),
                             autopara_info={"remote_info": info})
    assert tasks_of(out) == first, "submitted again"
    assert result is not None and out.read_bytes() == expected


def odd_outputs(items):
    out = []
    for atoms in items:
        if atoms.info["idx"] == 1:
            out.append("not a structure")
        elif atoms.info["idx"] == 2:
            raise RuntimeError("ünïcode\nand a second line")
        else:
            out.append(atoms)
    return out


class Tally:
    """A value of the user's own class, as an operation may return with outputs kept in memory."""

    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return isinstance(other, Tally) and other.n == self.n


def values_of(items):
    import numpy as np

    kinds = [lambda a: len(a), lambda a: {"n": len(a), "e": 0.1}, lambda a: np.arange(3) / 7, lambda a: Tally(len(a))]
    return [kinds[atoms.info["idx"] % 4](atoms) for atoms in items]


def test_outputs_none_takes_any_value_in_a_queued_job_as_in_a_serial_run(tmp_path):
    cells = cu_cells(4)
    assert autoparallelize(values_of, [c.copy() for c in cells], None, autopara_info=SERIAL) is None
    assert autoparallelize(values_of, [c.copy() for c in cells], None,
                           autopara_info={"remote_info": remote(4), "cache": tmp_path / "journal.sqlite"}) is None
