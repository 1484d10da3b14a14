"""The Slurm layer against a real cluster: job arrays of job_main, states read without sacct, scancel.

Tests marked ``slurm`` need the local cluster of tests/slurm/start_local_slurm.sh and
skip where there is none (the ``slurm_cluster`` fixture).  Job names are unique per
test: other runs may share the cluster.
"""

import os
import time
import uuid
from pathlib import Path

import ase.io
import pytest
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize.remote import slurm
from wfl_like.autoparallelize.remote.jobs import build_tasks, job_script, write_listing, write_tasks
from wfl_like.autoparallelize.remote.remote_info import RemoteInfo
from wfl_like.autoparallelize.remote.results import read_results
from wfl_like.calculators.generic import _calculate_op, calculate
from wfl_like.errors import SlurmError
from helpers import cu_cells

EMT_SPEC = (EMT, [], {})
CALCULATE_KWARGS = {"properties": None, "output_prefix": "_auto_", "verbose": False, "raise_calc_exceptions": False}
WAIT_S = 120
HERE = Path(__file__).resolve().parent


def unique_info(per_job, **resources):
    # the jobs import this module for its operations
    env = {"WFL_NUM_PYTHON_SUBPROCESSES": "0",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return RemoteInfo("slurm", f"wfl_like_remote_{uuid.uuid4().hex[:8]}", {"max_time": "5m", **resources},
                      num_inputs_per_queued_job=per_job, env_vars=env)


def slow_copy(items, delay):
    """The structures as they are, ``delay`` seconds each (module level: the jobs import it)."""
    for atoms in items:
        time.sleep(delay)
        atoms.info["slow"] = True
    return items




def wait_for(job_id, done, what):
    """Poll task_states until ``done(states)``; fail naming the job and its last states after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    states = {}
    while time.monotonic() < deadline:
        states = slurm.task_states(job_id)
        if done(states):
            return states
        time.sleep(0.3)
    pytest.fail(f"job {job_id}: {what} not seen within {WAIT_S} s; last states {states}")


@pytest.mark.slurm
def test_an_array_of_two_job_main_tasks_gives_the_serial_output(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(6))
    calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"), EMT_SPEC,
              autopara_info={"num_python_subprocesses": 0})
    info = unique_info(3, num_cores=1)
    tasks = build_tasks(_calculate_op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "remote.xyz"), info,
                        (EMT_SPEC,), CALCULATE_KWARGS)
    task_dirs = write_tasks(tmp_path / "tasks", tasks)
    assert len(task_dirs) == 2

    job_id = slurm.submit_array(job_script(info, write_listing(tmp_path / "tasks.list", task_dirs)), len(tasks),
                                info.sbatch_directives(len(tasks), tmp_path / "logs"), tmp_path)
    finished = [read_results(d).done for d in task_dirs]

    def all_finished(states):
        # a task Slurm has forgotten (past MinJobAge) is judged by its results file alone
        finished[:] = [read_results(d).done for d in task_dirs]
        return all(states.get(k) in slurm.FINAL_STATES or (k not in states and finished[k]) for k in range(2))

    states = wait_for(job_id, all_finished, "two finished tasks")
    assert set(states.values()) <= {"COMPLETED"}, [(p.name, p.read_text()) for p in (tmp_path / "logs").iterdir()]
    assert finished == [True, True]
    assert [[r.index for r in read_results(d).records] for d in task_dirs] == [[0, 1, 2], [3, 4, 5]]
    texts = "".join(record.text for d in task_dirs for record in read_results(d).records)
    assert texts == (tmp_path / "serial.xyz").read_text()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(
        f"{info.job_name}_{job_id}_{k}.{ext}" for k in range(2) for ext in ("out", "err"))


@pytest.mark.slurm
def test_items_finished_in_a_cancelled_job_are_kept_and_a_resubmission_computes_the_rest(tmp_path):
    from wfl_like import autoparallelize

    ase.io.write(tmp_path / "in.xyz", cu_cells(6))
    autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"), delay=0,
                    autopara_info={"num_python_subprocesses": 0})
    info = unique_info(6, num_cores=1)
    (task,) = build_tasks(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"), info,
                          op_kwargs={"delay": 0.5})
    (task_dir,) = write_tasks(tmp_path / "tasks", [task])
    script = job_script(info, write_listing(tmp_path / "tasks.list", [task_dir]))
    directives = info.sbatch_directives(1, tmp_path / "logs")

    job_id = slurm.submit_array(script, 1, directives, tmp_path)
    try:
        wait_for(job_id, lambda s: len(read_results(task_dir).records) >= 2, "two items recorded")
        slurm.cancel(job_id)
        wait_for(job_id, lambda s: s.get(0) == "CANCELLED", "CANCELLED")
    finally:
        slurm.cancel(job_id)
    kept = read_results(task_dir)
    assert not kept.done and 2 <= len(kept.records) < 6

    again = slurm.submit_array(script, 1, directives, tmp_path)
    wait_for(again, lambda s: read_results(task_dir).done and s.get(0, "COMPLETED") in slurm.FINAL_STATES,
             "the task done")
    results = read_results(task_dir)
    assert [r.index for r in results.records] == list(range(6))
    assert results.records[:len(kept.records)] == kept.records
    assert "".join(r.text for r in results.records) == (tmp_path / "serial.xyz").read_text()


@pytest.mark.slurm
def test_a_held_array_is_seen_pending_then_cancelled(tmp_path):
    info = unique_info(1)
    job_id = slurm.submit_array("echo never", 3, info.sbatch_directives(3, tmp_path), tmp_path, hold=True)
    try:
        states = wait_for(job_id, lambda s: len(s) == 3, "three tasks")
        assert states == {0: "PENDING", 1: "PENDING", 2: "PENDING"}
        slurm.cancel(job_id)
        states = wait_for(job_id, lambda s: set(s.values()) == {"CANCELLED"}, "CANCELLED")
    finally:
        slurm.cancel(job_id)
    assert states == {0: "CANCELLED", 1: "CANCELLED", 2: "CANCELLED"}
    assert not list(tmp_path.glob("*.out"))


@pytest.mark.slurm
def test_one_task_of_a_held_array_cancelled_leaves_the_others_pending(tmp_path):
    info = unique_info(1)
    job_id = slurm.submit_array("echo never", 3, info.sbatch_directives(3, tmp_path), tmp_path, hold=True)
    try:
        wait_for(job_id, lambda s: len(s) == 3, "three tasks")
        slurm.cancel(job_id, tasks=[1])
        # Slurm drops a pending task cancelled alone from its array's record: it has no state
        # left, and only its missing results say that it never ran
        states = wait_for(job_id, lambda s: 1 not in s, "task 1 gone")
        assert states == {0: "PENDING", 2: "PENDING"}
    finally:
        slurm.cancel(job_id)


@pytest.mark.slurm
def test_a_job_slurm_does_not_know_has_no_states_and_cancelling_it_is_no_error():
    assert slurm.task_states("999999999") == {}
    slurm.cancel("999999999")


@pytest.mark.slurm
def test_a_refused_submission_gives_the_command_and_its_stderr(tmp_path):
    directives = unique_info(1, partitions="no_such_partition").sbatch_directives(1)
    with pytest.raises(SlurmError, match=r"`sbatch --parsable .*` failed .*: .*(partition|Partition)"):
        slurm.submit_array("echo x", 1, directives, tmp_path)


def test_commands_missing_from_path_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="scontrol not found on PATH"):
        slurm.task_states("1")
    with pytest.raises(SlurmError, match="sbatch not found on PATH"):
        slurm.submit_array("echo x", 1, [], tmp_path)


def test_array_expressions():
    assert slurm.task_indices("3") == [3]
    assert slurm.task_indices("0-3") == [0, 1, 2, 3]
    assert slurm.task_indices("1,4-5") == [1, 4, 5]
    assert slurm.task_indices("0-6:3%2") == [0, 3, 6]
