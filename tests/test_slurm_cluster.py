"""The local Slurm cluster the driver's tests rely on: job arrays run, scancel is seen.

Real sbatch, squeue and scancel against the cluster tests/slurm/start_local_slurm.sh starts;
skipped where there is none (see the `slurm_cluster` fixture in conftest.py).
"""

import subprocess
import time

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
WAIT_S = 60


def _sbatch(*args):
    """Submit with sbatch and return the job id (the array's id for an array)."""
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def _states(job_id):
    """{task id: state} of a job or of all the tasks of an array, finished ones included."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-r", "-j", job_id, "-o", "%i %T"],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _wait_for(job_id, done, what):
    """Poll squeue until done(states) holds; fail naming the job and its last states after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    states = {}
    while time.monotonic() < deadline:
        states = _states(job_id)
        if done(states):
            return states
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: {what} not seen within {WAIT_S} s; last states {states}")


def test_job_array_of_four_runs_every_task(tmp_path):
    job_id = _sbatch("--array=0-3", "--job-name=wfl_like_array", "-D", str(tmp_path),
                     "-o", str(tmp_path / "task_%a.out"),
                     "--wrap", 'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"')
    states = _wait_for(job_id, lambda s: len(s) == 4 and set(s.values()) <= FINAL_STATES, "4 finished tasks")

    assert sorted(states) == [f"{job_id}_{i}" for i in range(4)]
    assert set(states.values()) == {"COMPLETED"}
    for i in range(4):
        assert (tmp_path / f"task_{i}.out").read_text() == f"task {i} of {job_id}\n"


def test_scancel_of_a_running_job_is_seen_as_cancelled(tmp_path):
    started = tmp_path / "started"
    finished = tmp_path / "finished"
    job_id = _sbatch("--job-name=wfl_like_cancel", "-D", str(tmp_path), "-o", str(tmp_path / "job.out"),
                     "--wrap", f"touch {started}; sleep 300; touch {finished}")
    _wait_for(job_id, lambda s: s.get(job_id) == "RUNNING" and started.exists(), "RUNNING")

    subprocess.run(["scancel", job_id], check=True)
    states = _wait_for(job_id, lambda s: s.get(job_id) in FINAL_STATES, "a final state")

    assert states[job_id] == "CANCELLED"
    assert not finished.exists()
