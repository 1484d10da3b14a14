"""Calls with ``remote_info``: chunks as Slurm job arrays, on the local cluster, in every way clusters fail.

Each test compares with a serial run of the same call, byte for byte, and reads the
driver's registry (``.OUTPUT.journal.jobs/jobs``) to count what was submitted.  Jobs
import this module for its operations (PYTHONPATH through ``env_vars``).  Job names
are unique per test: other runs may share the cluster.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ase.io
import pytest
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.autoparallelize.remote import slurm
from wfl_like.autoparallelize.remote.registry import JobRegistry
from wfl_like.autoparallelize.remote.results import read_results
from wfl_like.calculators.generic import calculate
from wfl_like.errors import AutoparallelizeError, FailedItemsWarning, QueuedJobsTimeout, SlurmError
from helpers import cu_cells, queued_remote_info, queued_task_dir

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(400)]

HERE = Path(__file__).resolve().parent
EMT_SPEC = (EMT, [], {})
SERIAL = {"num_python_subprocesses": 0}
WAIT_S = 180


def remote(per_job, **options):
    return queued_remote_info(per_job, "wfl_like_q", 0.3, **options)


def registry_of(output):
    return JobRegistry(output.with_name(f".{output.name}.journal.jobs"))


def job_ids_of(output):
    """Every (job id, array index) submitted for the call writing ``output``, per task."""
    registry = registry_of(output)
    try:
        return {number: list(entry.jobs) for number, entry in registry.tasks.items()}
    finally:
        registry.close()


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not seen within {WAIT_S} s")


def slow_copy(items, delay, slow_from=0):
    """The structures as they are (``info["idx"]`` kept), ``delay`` s each from item ``idx >= slow_from``."""
    for atoms in items:
        if atoms.info["idx"] >= slow_from:
            time.sleep(delay)
        atoms.info["copied"] = True
    return items


def first_time_slow(items, marks, slow_idx, delay):
    """Each structure as it is; item ``slow_idx`` takes ``delay`` s the first time it is computed only
    (a mark file says it was tried): a job killed at its wall time there finishes on resubmission."""
    for atoms in items:
        mark = Path(marks) / f"tried_{atoms.info['idx']}"
        if atoms.info["idx"] == slow_idx and not mark.exists():
            mark.touch()
            time.sleep(delay)
        atoms.info["copied"] = True
    return items


def refuse_odd(items):
    out = []
    for atoms in items:
        if atoms.info["idx"] % 2:
            raise ValueError(f"odd item {atoms.info['idx']} refused")
        atoms.info["even"] = True
        out.append(atoms)
    return out


def inputs(tmp_path, n):
    path = tmp_path / "in.xyz"
    ase.io.write(path, cu_cells(n))
    return path


def serial_text(op, tmp_path, *args, **kwargs):
    out = tmp_path / "serial.xyz"
    autoparallelize(op, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), *args, autopara_info=SERIAL, **kwargs)
    return out.read_text()


# --- the scenario: 2,000 EMT evaluations in 10 array jobs, the driver killed and rerun ---

DRIVER = """
import logging, sys
from ase.calculators.emt import EMT
from wfl_like import ConfigSet, OutputSpec
from wfl_like.calculators.generic import calculate
logging.basicConfig(level=logging.INFO)
calculate(ConfigSet("in.xyz"), OutputSpec("out.xyz"), (EMT, [], {{}}),
          autopara_info={{"remote_info": {remote_info!r}}})
print("DRIVER DONE")
"""


def test_2000_emt_in_10_array_jobs_driver_sigkilled_then_rerun_gives_serial_bytes_and_submits_nothing_twice(
        tmp_path):
    inputs(tmp_path, 2000)
    calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"), EMT_SPEC, autopara_info=SERIAL)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(remote_info=remote(200)))
    out = tmp_path / "out.xyz"
    state = tmp_path / ".out.xyz.journal.jobs"

    first = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        # killed once its jobs are out and computing, before they are all done
        wait_until(lambda: any(read_results(d).records for d in state.glob("task_*")), "a first item recorded")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    submitted = job_ids_of(out)
    assert len(submitted) == 10 and all(len(jobs) == 1 for jobs in submitted.values())
    assert len({jobs[0][0] for jobs in submitted.values()}) == 1       # one sbatch for the 10 jobs
    assert not all(read_results(d).done for d in state.glob("task_*")), "the jobs ended before the kill"
    assert not out.exists()

    second = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=WAIT_S)
    assert second.returncode == 0, second.stdout + second.stderr
    assert out.read_bytes() == (tmp_path / "serial.xyz").read_bytes()
    assert job_ids_of(out) == submitted             # re-attached: nothing submitted again
    # and a third run has nothing to do
    third = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=WAIT_S)
    assert third.returncode == 0 and "reusing it" in third.stderr
    assert job_ids_of(out) == submitted


# --- jobs failing as clusters fail ------------------------------------------------------


def cancel_when(output, recorded, job_index=0):
    """A thread that scancels the first job of ``output``'s call once ``recorded`` items of its
    task ``job_index`` have records; started, and returned."""
    state = output.with_name(f".{output.name}.journal.jobs")

    def run():
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if state.joinpath("jobs").exists() and job_index in job_ids_of(output) and \
                    len(read_results(queued_task_dir(output, job_index)).records) >= recorded:
                (job_id, array_index), = job_ids_of(output)[job_index][:1]
                slurm.cancel(job_id, tasks=[array_index])
                return
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_cancelled_job_keeps_its_finished_items_and_is_submitted_again_for_the_rest(tmp_path, caplog):
    inputs(tmp_path, 8)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    out = tmp_path / "out.xyz"
    canceller = cancel_when(out, recorded=2)
    with caplog.at_level(logging.INFO, logger="wfl_like.progress"):
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.5,
                        autopara_info={"remote_info": remote(8)})
    canceller.join()
    assert out.read_text() == expected
    (jobs,) = job_ids_of(out).values()
    assert len(jobs) == 2, jobs                      # the cancelled job, then one more
    assert "ended CANCELLED" in caplog.text and "submitting it again" in caplog.text
    records = read_results(queued_task_dir(out, 0)).records
    assert [r.index for r in records] == list(range(8))      # each item computed once


def test_items_of_a_job_cancelled_once_too_often_fail_naming_the_job_and_its_end(tmp_path):
    inputs(tmp_path, 6)
    out = tmp_path / "out.xyz"
    canceller = cancel_when(out, recorded=2)
    with pytest.warns(FailedItemsWarning) as warned:
        result = autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.5,
                                 autopara_info={"remote_info": remote(6, retries=0), "errors": "skip"})
    canceller.join()
    ((job_id, _),) = job_ids_of(out)[0]
    failed = {f.index: f.reason for f in result.failures}
    assert 2 <= min(failed) and max(failed) == 5
    assert all(f"{job_id}_0" in reason and "CANCELLED" in reason for reason in failed.values()), failed
    assert "its queued job ended without computing it" in str(warned[0].message)
    kept = [atoms.info["idx"] for atoms in ase.io.read(out, ":")]
    assert kept == list(range(min(failed)))


def test_a_job_killed_at_its_wall_time_is_submitted_again_and_finishes(tmp_path, caplog):
    # Slurm's time limits are whole minutes, checked about every 30 s: this test takes one to two minutes
    inputs(tmp_path, 5)
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "serial_marks").mkdir()
    expected = serial_text(first_time_slow, tmp_path, str(tmp_path / "serial_marks"), 2, 0)
    out = tmp_path / "out.xyz"
    with caplog.at_level(logging.INFO, logger="wfl_like.progress"):
        autoparallelize(first_time_slow, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), str(marks), 2, 600,
                        autopara_info={"remote_info": remote(5, resources={"max_time": "1m", "num_cores": 1})})
    assert out.read_text() == expected
    (jobs,) = job_ids_of(out).values()
    assert len(jobs) == 2
    assert "ended TIMEOUT" in caplog.text


def test_a_job_whose_processes_are_all_killed_is_submitted_again(tmp_path, caplog):
    """A node that dies takes its job's processes with it: here they are SIGKILLed, every one."""
    inputs(tmp_path, 6)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    out = tmp_path / "out.xyz"
    state = tmp_path / ".out.xyz.journal.jobs"

    killed = []

    def kill_job():
        wait_until(lambda: state.joinpath("jobs").exists() and 0 in job_ids_of(out)
                   and len(read_results(queued_task_dir(out, 0)).records) >= 2, "two items recorded")
        ((array_id, array_index),) = job_ids_of(out)[0][:1]
        # the array task's own job id, which listpids takes
        job_id = slurm.run_command(["squeue", "-h", "-j", f"{array_id}_{array_index}", "-o", "%A"]).strip()
        answer = slurm.run_command(["scontrol", "listpids", job_id])
        pids = [int(line.split()[0]) for line in answer.splitlines()[1:] if line.split()[0].isdigit()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    killer = threading.Thread(target=kill_job, daemon=True)
    killer.start()
    with caplog.at_level(logging.INFO, logger="wfl_like.progress"):
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.5,
                        autopara_info={"remote_info": remote(6)})
    killer.join()
    assert killed, "no process of the job was found to kill"
    assert out.read_text() == expected
    (jobs,) = job_ids_of(out).values()
    assert len(jobs) == 2
    assert "submitting it again" in caplog.text


def test_a_held_job_times_the_driver_out_and_a_rerun_after_release_collects_it(tmp_path):
    inputs(tmp_path, 4)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    out = tmp_path / "out.xyz"
    held = remote(4, header_extra=["--hold"], timeout=3)
    with pytest.raises(QueuedJobsTimeout, match=r"after 3 s .* \d+_0 \(PENDING\).* rerun the same call"):
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0,
                        autopara_info={"remote_info": held})
    assert not out.exists()
    ((job_id, _),) = job_ids_of(out)[0]
    try:
        slurm.run_command(["scontrol", "release", job_id])
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0,
                        autopara_info={"remote_info": {**held, "timeout": None}})
    finally:
        slurm.cancel(job_id)
    assert out.read_text() == expected
    assert job_ids_of(out) == {0: [(job_id, 0)]}


def test_items_that_raise_are_failures_of_the_call_and_a_rerun_computes_only_them_again(tmp_path):
    inputs(tmp_path, 6)
    out = tmp_path / "out.xyz"
    with pytest.raises(AutoparallelizeError, match="odd item 1 refused"):
        autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                        autopara_info={"remote_info": remote(3)})
    assert not out.exists()
    with pytest.warns(FailedItemsWarning, match="odd item 3 refused"):
        result = autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                                 autopara_info={"remote_info": remote(3), "errors": "skip"})
    assert sorted(f.index for f in result.failures) == [1, 3, 5]
    assert [a.info["idx"] for a in ase.io.read(out, ":")] == [0, 2, 4]
    # the even items came from the first call's tasks; the odd ones went out once more, together
    tasks = job_ids_of(out)
    assert len(tasks) == 3
    assert [r.index for r in read_results(queued_task_dir(out, 2)).records] == [1, 3, 5]
    with pytest.warns(FailedItemsWarning):
        serial = autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "serial.xyz"),
                                 autopara_info={**SERIAL, "errors": "skip"})
    assert len(serial.failures) == 3
    assert out.read_text() == (tmp_path / "serial.xyz").read_text()


# --- not waiting, and what is refused ----------------------------------------------------


def test_wait_for_results_false_returns_at_once_and_a_later_call_collects(tmp_path):
    inputs(tmp_path, 6)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    out = tmp_path / "out.xyz"
    options = remote(3, wait_for_results=False)
    assert autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.3,
                           autopara_info={"remote_info": options}) is None
    assert not out.exists()
    submitted = job_ids_of(out)
    assert len(submitted) == 2
    state = tmp_path / ".out.xyz.journal.jobs"
    wait_until(lambda: all(read_results(d).done for d in state.glob("task_*")), "both tasks done")
    result = autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.3,
                             autopara_info={"remote_info": options})
    assert result is not None and out.read_text() == expected
    assert job_ids_of(out) == submitted


def test_remote_info_from_the_wfl_expyre_info_env_var_keyed_by_operation_name(tmp_path, monkeypatch):
    inputs(tmp_path, 4)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    monkeypatch.setenv("WFL_EXPYRE_INFO", json.dumps({"slow_copy": remote(2), "other_op": remote(1)}))
    out = tmp_path / "out.xyz"
    autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0)
    assert out.read_text() == expected
    assert len(job_ids_of(out)) == 2


def test_inputs_in_memory_with_a_journal_path_give_the_serial_structures(tmp_path):
    cells = cu_cells(4)
    serial = list(calculate([c.copy() for c in cells], OutputSpec(), EMT_SPEC, autopara_info=SERIAL))
    queued = list(calculate([c.copy() for c in cells], OutputSpec(), EMT_SPEC,
                            autopara_info={"remote_info": remote(2), "cache": tmp_path / "journal.sqlite"}))
    assert [a.info["idx"] for a in queued] == [0, 1, 2, 3]
    for mine, theirs in zip(queued, serial):
        # exactly: outputs in memory do not travel as text
        assert mine.info["EMT_energy"] == theirs.info["EMT_energy"]
        assert (mine.arrays["EMT_forces"] == theirs.arrays["EMT_forces"]).all()


def test_a_call_without_a_journal_is_refused_before_anything_is_submitted(tmp_path):
    with pytest.raises(ValueError, match="remote_info needs a journal"):
        calculate(cu_cells(2), OutputSpec(), EMT_SPEC, autopara_info={"remote_info": remote(1)})


def test_sbatch_refusing_the_jobs_is_one_clear_error_and_the_outputs_are_left_alone(tmp_path):
    inputs(tmp_path, 2)
    out = tmp_path / "out.xyz"
    bad = remote(1, resources={"max_time": "5m", "partitions": "no_such_partition"})
    with pytest.raises(SlurmError, match="sbatch .* failed.*partition"):
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0,
                        autopara_info={"remote_info": bad})
    assert not out.exists()


def labelled(items, label, _autopara_per_item_info=None):
    """Each structure with ``label`` and a number drawn from its own generator."""
    for atoms, item_info in zip(items, _autopara_per_item_info):
        atoms.info["label"] = label
        atoms.info["draw"] = float(item_info["rng"].uniform())
    return items


def test_per_item_generators_match_the_serial_run_and_a_changed_argument_is_computed_again(tmp_path):
    import numpy as np

    inputs(tmp_path, 6)
    expected = serial_text(labelled, tmp_path, "a", rng=np.random.default_rng(7))
    out = tmp_path / "out.xyz"
    autoparallelize(labelled, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), "a", rng=np.random.default_rng(7),
                    autopara_info={"remote_info": remote(4)})
    assert out.read_text() == expected
    assert len(job_ids_of(out)) == 2
    # another argument: nothing of the first run's tasks is taken
    autoparallelize(labelled, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), "b", rng=np.random.default_rng(7),
                    autopara_info={"remote_info": remote(4)})
    assert [a.info["label"] for a in ase.io.read(out, ":")] == ["b"] * 6
    assert len(job_ids_of(out)) == 4


def test_identical_inputs_in_memory_each_get_their_output(tmp_path):
    cell = cu_cells(1)[0]
    twins = [cell.copy() for _ in range(5)]         # one same item, five times: one cache key
    queued = list(calculate(twins, OutputSpec(), EMT_SPEC,
                            autopara_info={"remote_info": remote(2), "cache": tmp_path / "journal.sqlite"}))
    assert len(queued) == 5
    assert len({atoms.info["EMT_energy"] for atoms in queued}) == 1


def test_the_driver_rides_out_a_restart_of_the_slurm_controller(tmp_path):
    """slurmctld stopped for a few seconds while the jobs run (a maintenance restart): the driver
    neither fails nor judges the jobs lost, and collects them once the controller is back."""
    pid_file = Path("/var/lib/wfl_like-slurm/run/slurmctld.pid")
    start_script = HERE / "slurm" / "start_local_slurm.sh"
    if not pid_file.exists():
        pytest.skip("needs the local cluster of tests/slurm/start_local_slurm.sh, which this test restarts")
    inputs(tmp_path, 8)
    expected = serial_text(slow_copy, tmp_path, delay=0)
    out = tmp_path / "out.xyz"
    state = tmp_path / ".out.xyz.journal.jobs"

    def restart_controller():
        wait_until(lambda: any(read_results(d).records for d in state.glob("task_*")), "a first record")
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        time.sleep(5)
        subprocess.run(["bash", str(start_script)], check=True, capture_output=True, timeout=120)

    restarter = threading.Thread(target=restart_controller, daemon=True)
    restarter.start()
    try:
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=1.0,
                        autopara_info={"remote_info": remote(4)})
    finally:
        restarter.join(timeout=150)
        subprocess.run(["bash", str(start_script)], check=True, capture_output=True, timeout=120)
    assert out.read_text() == expected
    assert all(len(jobs) == 1 for jobs in job_ids_of(out).values())


def test_the_progress_bar_counts_items_and_queued_jobs_by_state(tmp_path, capsys):
    inputs(tmp_path, 4)
    out = tmp_path / "out.xyz"
    autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), delay=0.2,
                    autopara_info={"remote_info": remote(2), "progress": True})
    drawn = capsys.readouterr().err.replace("\r", "\n")
    states = [line for line in drawn.splitlines() if line.startswith("slow_copy:")]
    assert states and "4/4" in states[-1], drawn
    # the jobs' states as the driver saw them, the last of them all done
    assert any("jobs:" in line and ("pending" in line or "running" in line) for line in states), drawn
    assert "jobs: 2 done" in drawn, drawn


def test_overwrite_after_a_collected_call_computes_everything_again(tmp_path):
    inputs(tmp_path, 2)
    out = tmp_path / "out.xyz"
    for _ in range(2):
        autoparallelize(slow_copy, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out, overwrite=True), delay=0,
                        autopara_info={"remote_info": remote(2)})
    # the first call collected its task: the second, asked to overwrite, took nothing from it
    (jobs,) = job_ids_of(out).values()
    assert len(jobs) == 1
    assert len(list(out.with_name(".out.xyz.journal.jobs").glob("jobs.replaced-*"))) == 1
    assert out.read_text() == serial_text(slow_copy, tmp_path, delay=0)
