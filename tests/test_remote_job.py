"""What runs inside a queued job (job_main), run here as the real command, without Slurm.

The tasks are built as the driver builds them (jobs.build_tasks); the job's texts are
compared with a serial run's output file, byte for byte.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.autoparallelize.remote.jobs import build_tasks, write_tasks
from wfl_like.autoparallelize.resume import codec
from wfl_like.autoparallelize.remote.remote_info import RemoteInfo
from wfl_like.autoparallelize.remote.results import ItemRecord, read_results
from wfl_like.calculators.generic import _calculate_op, calculate
from helpers import cu_cells

HERE = Path(__file__).resolve().parent
EMT_SPEC = (EMT, [], {})
CALCULATE_KWARGS = {"properties": None, "output_prefix": "_auto_", "verbose": False, "raise_calc_exceptions": False}
SERIAL = {"num_python_subprocesses": 0}


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)




def remote(per_job):
    return RemoteInfo("slurm", "wfl_like_test", {"max_time": "5m"}, num_inputs_per_queued_job=per_job)


def run_job(task_dir, **env):
    """Run job_main on ``task_dir`` as a job would; this test module importable there (its ops)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                   **env}
    return subprocess.run([sys.executable, "-m", "wfl_like.autoparallelize.remote.job_main", str(task_dir)],
                          capture_output=True, text=True, env=environment, timeout=300)


def texts_of(task_dirs):
    return "".join(record.text for task_dir in task_dirs for record in read_results(task_dir).records)


# --- operations run by the jobs (module level: the job imports them) ----------------------

def mark_and_maybe_die(items, marker_dir, kill_at, _autopara_per_item_info):
    """Leave a marker per item computed; SIGKILL this very process at item ``kill_at`` the first time."""
    for atoms, info in zip(items, _autopara_per_item_info):
        index = info["item_i"]
        with open(Path(marker_dir) / f"ran_{index}", "a") as handle:
            handle.write(f"{os.getpid()}\n")
        if index == kill_at and not (Path(marker_dir) / "killed").exists():
            (Path(marker_dir) / "killed").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        atoms.info["item_i"] = index
        atoms.info["draw"] = float(info["rng"].uniform())
    return items


def refuse_odd(items):
    """Fail on structures with an odd ``idx``; return the others as they are."""
    for atoms in items:
        if atoms.info["idx"] % 2:
            raise ValueError(f"odd structure {atoms.info['idx']}")
    return items


# --- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_jobs_over_file_inputs_write_the_serial_output_bytes(tmp_path, workers):
    ase.io.write(tmp_path / "in.xyz", cu_cells(7))
    calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"), EMT_SPEC, autopara_info=SERIAL)

    tasks = build_tasks(_calculate_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "remote.xyz"),
                        remote(3), (EMT_SPEC,), CALCULATE_KWARGS, {"num_inputs_per_python_subprocess": 2})
    assert [task.indices for task in tasks] == [[0, 1, 2], [3, 4, 5], [6]]
    task_dirs = write_tasks(tmp_path / "tasks", tasks)
    for task_dir in task_dirs:
        answer = run_job(task_dir, WFL_NUM_PYTHON_SUBPROCESSES=str(workers))
        assert answer.returncode == 0, answer.stderr

    assert all(read_results(task_dir).done for task_dir in task_dirs)
    assert texts_of(task_dirs) == (tmp_path / "serial.xyz").read_text()
    assert not (tmp_path / "remote.xyz").exists()       # the driver writes it, from the records


def test_atoms_inputs_in_memory_give_the_serial_results(tmp_path):
    cells = cu_cells(4)
    serial = list(calculate([c.copy() for c in cells], OutputSpec(), EMT_SPEC, autopara_info=SERIAL))
    tasks = build_tasks(_calculate_op, [c.copy() for c in cells], None, remote(-2), (EMT_SPEC,), CALCULATE_KWARGS)
    task_dirs = write_tasks(tmp_path, tasks)
    for task_dir in task_dirs:
        assert run_job(task_dir, SLURM_CPUS_ON_NODE="2").returncode == 0

    records = [record for task_dir in task_dirs for record in read_results(task_dir).records]
    assert [record.index for record in records] == [0, 1, 2, 3]
    for record, expected in zip(records, serial):
        # outputs in memory travel in the journal's data-only form: exactly, not as text
        atoms = codec.decode(record.data)
        assert atoms.info["EMT_energy"] == expected.info["EMT_energy"]
        assert np.array_equal(atoms.arrays["EMT_forces"], expected.arrays["EMT_forces"])


def test_items_that_raise_are_recorded_failed_and_the_rest_done(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(5))
    (task,) = build_tasks(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"), remote(5),
                          autopara_info={"num_inputs_per_python_subprocess": 5})
    (task_dir,) = write_tasks(tmp_path / "tasks", [task])
    answer = run_job(task_dir)
    assert answer.returncode == 0, answer.stderr

    results = read_results(task_dir)
    assert results.done
    assert [(r.index, r.ok, r.count) for r in results.records] == [(0, True, 1), (1, False, 0), (2, True, 1),
                                                                   (3, False, 0), (4, True, 1)]
    assert results.records[1] == ItemRecord(1, False, reason="ValueError: odd structure 1")


def test_a_job_killed_midway_is_taken_up_again_computing_only_the_rest(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(6))
    markers = tmp_path / "markers"
    markers.mkdir()
    rng = np.random.default_rng(7)
    (task,) = build_tasks(mark_and_maybe_die, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"),
                          remote(6), (), {"marker_dir": str(markers), "kill_at": 3}, SERIAL, rng=rng)
    (task_dir,) = write_tasks(tmp_path / "tasks", [task])

    killed = run_job(task_dir)
    assert killed.returncode == -signal.SIGKILL
    # records come back in input order: a serial job has one chunk computed and not yet recorded
    recorded = [r.index for r in read_results(task_dir).records]
    assert recorded in ([0, 1], [0, 1, 2]) and not read_results(task_dir).done

    again = run_job(task_dir)
    assert again.returncode == 0, again.stderr
    runs = {i: len((markers / f"ran_{i}").read_text().split()) for i in range(6)}
    assert runs == {i: 1 if i in recorded or i > 3 else 2 for i in range(6)}

    # the same texts as one uninterrupted serial run with the same generator
    (markers / "killed").touch()
    autoparallelize(mark_and_maybe_die, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"),
                    marker_dir=str(markers), kill_at=3, autopara_info=SERIAL, rng=np.random.default_rng(7))
    assert texts_of([task_dir]) == (tmp_path / "serial.xyz").read_text()


def test_a_directory_without_a_task_exits_2_naming_it(tmp_path):
    answer = run_job(tmp_path / "empty")
    assert answer.returncode == 2
    assert "no task.pickle in task directory" in answer.stderr and "empty" in answer.stderr
