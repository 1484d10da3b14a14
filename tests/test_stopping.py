"""A stop signal ends the run even when the clean stop cannot: ``wfl_like.stopping``.

The driver scripts here get stuck for real the way a run does on a cluster: the file
system stops answering while an output is stored (the call blocks, and swallows the
exception the signal raises).  The watchdog must then kill the workers, remove the
partial output and end the process, keeping what the journal already holds.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor

import pytest

from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like.stopping import stop_on_signals
from helpers import driver_env, end_process_group, group_exists, is_running, wait_for

STUCK_DRIVER = textwrap.dedent("""
    import os, sys, time
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.stopping import stop_on_signals

    MARKERS, OUT, WORKERS, FORCE_AFTER = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

    def op(items):
        for atoms in items:
            open(os.path.join(MARKERS, f"item-{atoms.info['label']}-{os.getpid()}"), "w").close()
        return items

    class StuckOutput(OutputSpec):
        # after the first structure, storing blocks and ignores every exception: what a
        # hung network file system, or C code that swallows signals, looks like
        # (the engine writes each output, once rendered and journaled, with store_rendered)
        def store_rendered(self, rendered):
            super().store_rendered(rendered)      # flushed: flush=True is the default
            while True:
                try:
                    # inside the try: a signal sent once this file exists is swallowed
                    # here whenever it lands, never raised out of store_rendered()
                    open(os.path.join(MARKERS, "stuck"), "w").close()
                    time.sleep(3600)
                except BaseException:
                    # the first signal's handler has run: only now may a second signal
                    # be sent, or CPython would merge the two into one handler call
                    open(os.path.join(MARKERS, "interrupted"), "w").close()

    inputs = [Atoms("H", cell=[3, 3, 3], pbc=True, info={"label": i}) for i in range(20)]
    with stop_on_signals(force_after=FORCE_AFTER, prog="driver"):
        autoparallelize(op, inputs, StuckOutput(OUT),
                        autopara_info={"num_python_subprocesses": WORKERS, "num_inputs_per_python_subprocess": 1})
""")


class StuckRun:
    def __init__(self, tmp_path, workers, force_after):
        script = tmp_path / "driver.py"
        script.write_text(STUCK_DRIVER)
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.out = tmp_path / "out.xyz"
        self.partial = tmp_path / ".out.xyz.partial"
        self.stderr_path = tmp_path / "stderr.txt"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, str(script), str(self.markers), str(self.out),
                                          str(workers), str(force_after)],
                                         cwd=tmp_path, env=driver_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        self.pgid = self.proc.pid

    def wait_until_stuck(self):
        assert wait_for((self.markers / "stuck").exists, 60), self.stderr()
        assert self.partial.exists()
        return {int(p.name.rsplit("-", 1)[1]) for p in self.markers.glob("item-*")} - {self.proc.pid}

    def stderr(self):
        return self.stderr_path.read_text()

    def cleanup(self):
        end_process_group(self.proc)


@pytest.fixture
def stuck_run(tmp_path):
    runs = []

    def start(workers, force_after):
        runs.append(StuckRun(tmp_path, workers, force_after))
        return runs[-1]

    yield start
    for run in runs:
        run.cleanup()


def wait_exit(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the driver was still running {timeout} s after the stop signal")


def assert_stopped_cleanly(run, signum, worker_pids):
    stderr = run.stderr()
    assert "Traceback" not in stderr, stderr
    assert not run.out.exists()
    assert not run.partial.exists(), "the partial output was left behind"
    # 60 s: a killed process stays in its group as a zombie until it is reaped
    assert wait_for(lambda: not group_exists(run.pgid), 60), "processes of the run are still alive"
    # workers lead process groups of their own: they are waited for by pid (a SIGKILL sent
    # by the forced stop takes effect when the kernel next runs them)
    assert wait_for(lambda: not any(is_running(pid) for pid in worker_pids), 60), "a worker is still alive"
    # what was computed before the stop is still in the journal, for the rerun
    with Journal(journal_path(run.out), read_only=True) as journal:
        assert journal.counts()["done"] >= 1


# above the sum of the waits (start-up, exit, group gone: 60 s each), so that a wait's
# own failure message is what a hung run reports
@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stuck_clean_stop_is_forced_after_the_grace_period(stuck_run, workers, signum):
    run = stuck_run(workers, force_after=1.0)
    worker_pids = run.wait_until_stuck()
    assert bool(worker_pids) == bool(workers), "the items did not run where they should"
    assert all(is_running(pid) for pid in worker_pids)
    run.proc.send_signal(signum)
    assert wait_exit(run.proc, 60) == 128 + signum, run.stderr()
    assert "clean stop took more than 1 s" in run.stderr()
    assert_stopped_cleanly(run, signum, worker_pids)


@pytest.mark.timeout(360)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_second_signal_forces_the_stop_at_once(stuck_run, workers):
    # a grace period far longer than the test: only the second signal can end the run
    run = stuck_run(workers, force_after=3600)
    worker_pids = run.wait_until_stuck()
    run.proc.send_signal(signal.SIGINT)
    assert wait_for((run.markers / "interrupted").exists, 60), \
        f"the driver never handled the first signal\n{run.stderr()}"
    assert run.proc.poll() is None, f"the stuck run ended on the first signal\n{run.stderr()}"
    run.proc.send_signal(signal.SIGINT)
    assert wait_exit(run.proc, 60) == 128 + signal.SIGINT, run.stderr()
    assert "second signal" in run.stderr()
    assert_stopped_cleanly(run, signal.SIGINT, worker_pids)


def test_stop_on_signals_restores_the_handlers_and_a_nested_one_leaves_the_outer_in_force():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals() as outer:
        ours = signal.getsignal(signal.SIGTERM)
        assert ours is not before[signal.SIGTERM]
        with stop_on_signals() as inner:      # e.g. a script calling the command line's main()
            assert inner is outer
        assert signal.getsignal(signal.SIGTERM) == ours
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_the_block_ends_while_processes_forked_in_it_live_on():
    # a forked child holds a copy of the watchdog's pipe: the end of the block must not
    # wait for the child to close it; the handler it restores is the one before it (a library
    # loaded by an earlier test may have set its own)
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        assert executor.submit(abs, -3).result() == 3
    try:
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        executor.shutdown()


EXECUTOR_DRIVER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.stopping import stop_on_signals

    MARKERS, OUT = sys.argv[1], sys.argv[2]

    def op(items):
        for atoms in items:
            open(os.path.join(MARKERS, f"item-{atoms.info['label']}"), "w").close()
            if atoms.info["label"] >= 2:
                # long enough to be signalled in, short enough that a task the executor had
                # already queued (it cannot be withdrawn) ends before the driver's exit
                time.sleep(10)
        return items

    inputs = [Atoms("H", cell=[3, 3, 3], pbc=True, info={"label": i}) for i in range(6)]
    executor = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    with stop_on_signals(force_after=3600, prog="driver"):
        autoparallelize(op, inputs, OutputSpec(OUT), autopara_info={"executor": executor})
""")


@pytest.mark.timeout(300)
def test_ctrl_c_to_the_group_with_forked_executor_workers_is_one_clean_stop(tmp_path):
    # the executor's workers, forked inside the block, receive the same SIGINT: it must end
    # them as it would have without stop_on_signals, not count as a second signal here
    script = tmp_path / "driver.py"
    script.write_text(EXECUTOR_DRIVER)
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out.xyz"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(markers), str(out)], cwd=tmp_path,
                                env=driver_env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        assert wait_for(lambda: len(list(markers.glob("item-*"))) >= 3, 60), stderr_path.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        returncode = wait_exit(proc, 120)
    finally:
        end_process_group(proc)
    stderr = stderr_path.read_text()
    assert returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr
    assert "second signal" not in stderr and "were killed" not in stderr, stderr
    assert not out.exists()
    assert not (tmp_path / ".out.xyz.partial").exists()


def test_stop_on_signals_turns_sigterm_into_an_exception_in_the_block():
    from wfl_like.stopping import Terminated, stop_requested

    with pytest.raises(Terminated):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            # the handler raises at the next bytecode; the deadline only bounds a failure
            wait_for(lambda: False, 60)
    assert not stop_requested()             # nothing is left in force after the block
