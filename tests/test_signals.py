"""Stopping a library run by a signal, and ops that plain pickle refuses; real driver processes.

Each test writes a small driver script to ``tmp_path`` and runs it in its own session
(``start_new_session=True``), so the driver's process group holds the driver and its
workers, and nothing else: an empty group means no orphan is left.  The command line's
own signal handling is tested in ``test_cli.py``.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import ase.io
import pytest

from wfl_like.autoparallelize import autoparallelize
from helpers import driver_env, end_process_group, group_exists, is_running as process_running, listing, wait_for

START_METHOD_ENV = "WFL_LIKE_START_METHOD"

N_ITEMS = 6          # items 0 and 1 are quick, so the output file is begun; 2.. sleep
N_QUICK = 2

# Deadline of every wait on another process (start-up, exit, reaping): generous, since
# CI machines can be heavily loaded; a passing run never waits that long.
DEADLINE = 60

# Above the sum of the waits of the sleepy tests (busy, stopped, workers and group gone,
# rerun), so that a wait's own message, not pytest's timeout, reports a hang.
SLEEPY_TIMEOUT = 6 * DEADLINE

SLEEPY_DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    MARKERS, OUT, SLEEP = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def op(items):
        for atoms in items:
            label = atoms.info["label"]
            kind = "busy" if label >= {n_quick} else "quick"
            with open(os.path.join(MARKERS, f"{{kind}}-{{label}}-{{os.getpid()}}"), "w"):
                pass
            if kind == "busy":
                time.sleep(SLEEP)
        return items

    if __name__ == "__main__":
        inputs = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[4, 4, 4], pbc=True,
                        info={{"label": i}}) for i in range({n_items})]
        try:
            autoparallelize(op, inputs, OutputSpec(OUT),
                            autopara_info={{"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 1}})
        except KeyboardInterrupt:
            # what a caller that goes on (a notebook) sees: are the workers already gone?
            alive = []
            for name in os.listdir(MARKERS):
                pid = int(name.rsplit("-", 1)[1])
                try:
                    with open(f"/proc/{{pid}}/status") as f:
                        state = [line.split()[1] for line in f if line.startswith("State:")][0]
                except FileNotFoundError:
                    continue
                if state not in ("Z", "X"):
                    alive.append(pid)
            print(json.dumps({{"alive_after_interrupt": alive}}), flush=True)
            raise
        print("finished")
""").format(n_quick=N_QUICK, n_items=N_ITEMS)


def marker_pids(directory, kind):
    return {int(p.name.rsplit("-", 1)[1]) for p in directory.iterdir() if p.name.startswith(kind + "-")}


class SleepyRun:
    """A driver running the sleepy op with 2 workers, both busy on items that sleep for an hour.

    An hour, not less: the run must still be going when the test, however starved of
    CPU, gets round to signalling it; the signal or the cleanup ends the sleep.
    """

    def __init__(self, tmp_path, sleep=3600):
        self.script = tmp_path / "driver.py"
        self.script.write_text(SLEEPY_DRIVER)
        self.markers = tmp_path / "markers"
        self.markers.mkdir(exist_ok=True)
        self.out = tmp_path / "out.xyz"
        self.partial = tmp_path / ".out.xyz.partial"
        self.stderr_path = tmp_path / "stderr.txt"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.markers), str(self.out),
                                          str(sleep)], cwd=tmp_path, env=driver_env(), stdout=subprocess.PIPE,
                                         stderr=stderr, text=True, start_new_session=True)
        self.pgid = self.proc.pid

    def wait_until_busy(self):
        """Both workers are in the long sleep, and the quick items were written to the partial file."""
        ok = wait_for(lambda: len(marker_pids(self.markers, "busy")) == 2 and self.partial.exists()
                      and self.partial.stat().st_size > 0, DEADLINE)
        assert ok, f"the workers never got busy: {sorted(os.listdir(self.markers))}\n{self.stderr()}"
        assert self.proc.poll() is None, self.stderr()
        worker_pids = marker_pids(self.markers, "busy") | marker_pids(self.markers, "quick")
        assert self.proc.pid not in worker_pids      # the items did run in workers
        assert all(process_running(pid) for pid in worker_pids)
        return worker_pids

    def stop(self, signum):
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not exit after {signal.Signals(signum).name}\n{self.stderr()}")

    def stderr(self):
        return self.stderr_path.read_text()

    def cleanup(self):
        end_process_group(self.proc)
        self.proc.stdout.close()


@pytest.fixture
def sleepy(tmp_path):
    run = SleepyRun(tmp_path)
    yield run
    run.cleanup()


def assert_rerun_completes(tmp_path, run):
    """A new run over the same output path (stale partial file or not) writes every item."""
    rerun = SleepyRun(tmp_path, sleep=0)
    try:
        returncode = rerun.proc.wait(timeout=DEADLINE)
        assert returncode == 0, rerun.stderr()
        assert rerun.proc.stdout.read().strip() == "finished"
    finally:
        rerun.cleanup()
    written = ase.io.read(run.out, ":")
    assert [atoms.info["label"] for atoms in written] == list(range(N_ITEMS))
    assert not run.partial.exists()


@pytest.mark.timeout(SLEEPY_TIMEOUT)
def test_sigint_to_driver_raises_keyboardinterrupt_and_cleans_up(tmp_path, sleepy):
    worker_pids = sleepy.wait_until_busy()
    returncode = sleepy.stop(signal.SIGINT)
    stderr = sleepy.stderr()
    # an uncaught KeyboardInterrupt ends Python by SIGINT, after its traceback
    assert returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr
    stdout = sleepy.proc.stdout.read()
    assert "finished" not in stdout
    # the workers were killed before KeyboardInterrupt reached the caller
    assert json.loads(stdout.strip().splitlines()[-1]) == {"alive_after_interrupt": []}
    assert not sleepy.out.exists()
    assert not sleepy.partial.exists(), "the half-written file was left behind"
    assert wait_for(lambda: not any(process_running(pid) for pid in worker_pids), DEADLINE), \
        f"workers still alive: {[pid for pid in worker_pids if process_running(pid)]}"
    # a killed process stays in its group as a zombie until it is reaped
    assert wait_for(lambda: not group_exists(sleepy.pgid), DEADLINE), "processes of the run are still alive"


@pytest.mark.timeout(SLEEPY_TIMEOUT)
def test_sigterm_to_driver_kills_busy_workers(tmp_path, sleepy):
    worker_pids = sleepy.wait_until_busy()
    returncode = sleepy.stop(signal.SIGTERM)
    # no handler in a library run: the default action ends the driver at once, with no
    # cleanup, and the kernel kills the workers (PR_SET_PDEATHSIG) mid-sleep
    assert returncode == -signal.SIGTERM, sleepy.stderr()
    assert not sleepy.out.exists(), "a file was published at the output path"
    # a killed process stays in its group as a zombie until it is reaped
    assert wait_for(lambda: not group_exists(sleepy.pgid), DEADLINE), "processes of the run are still alive"
    # workers lead process groups of their own (so that what the op starts dies with them):
    # the driver's empty group does not say they are gone
    assert wait_for(lambda: not any(process_running(pid) for pid in worker_pids), DEADLINE), \
        f"workers still alive: {[pid for pid in worker_pids if process_running(pid)]}"
    # a stale hidden partial file may remain; it must not get in the way of the next run
    assert_rerun_completes(tmp_path, sleepy)


@pytest.mark.timeout(SLEEPY_TIMEOUT)
def test_sigkill_to_driver_kills_busy_workers(tmp_path, sleepy):
    worker_pids = sleepy.wait_until_busy()
    returncode = sleepy.stop(signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert not sleepy.out.exists(), "a file was published at the output path"
    # a killed process stays in its group as a zombie until it is reaped
    assert wait_for(lambda: not group_exists(sleepy.pgid), DEADLINE), "processes of the run are still alive"
    # workers lead process groups of their own (so that what the op starts dies with them):
    # the driver's empty group does not say they are gone
    assert wait_for(lambda: not any(process_running(pid) for pid in worker_pids), DEADLINE), \
        f"workers still alive: {[pid for pid in worker_pids if process_running(pid)]}"
    assert_rerun_completes(tmp_path, sleepy)


# --- ops that plain pickle refuses ---------------------------------------------------------

UNPICKLABLE_DRIVER = textwrap.dedent("""
    import json, os, pickle, sys
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def tagged(atoms, value):
        atoms = atoms.copy()
        atoms.info["value"] = value
        atoms.info["pid"] = os.getpid()
        atoms.info["ppid"] = os.getppid()
        atoms.info["main"] = sys.modules["__main__"].__name__
        return atoms

    def in_main(items):
        return [tagged(atoms, 3 * atoms.info["x"] + 1) for atoms in items]

    def make_closure(k):
        def closure(items):
            return [tagged(atoms, k * atoms.info["x"] - 2) for atoms in items]
        return closure

    if __name__ == "__main__":
        ops = {
            "lambda": lambda items: [tagged(atoms, atoms.info["x"] ** 2) for atoms in items],
            "closure": make_closure(7),
            "main": in_main,
        }
        picklable = {}
        for name, op in ops.items():
            try:
                pickle.loads(pickle.dumps(op))
                picklable[name] = True
            except Exception:
                picklable[name] = False
        inputs = [Atoms("H", positions=[[0, 0, 0.1 * i]], info={"x": i}) for i in range(11)]
        runs = {}
        for name, op in ops.items():
            for nproc in (0, 2):
                out = autoparallelize(op, inputs, OutputSpec(), autopara_info={
                    "num_python_subprocesses": nproc, "num_inputs_per_python_subprocess": 3})
                runs[f"{name}/{nproc}"] = [[a.info["x"], a.info["value"], a.info["pid"], a.info["ppid"],
                                            a.info["main"]] for a in out]
        print(json.dumps({"driver": os.getpid(), "picklable": picklable, "runs": runs}))
""")


# the driver's own limit fires first, with its output, if it hangs
@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", [None, "spawn", "forkserver"], ids=["default", "spawn", "forkserver"])
def test_lambda_closure_and_main_function_run_in_workers(tmp_path, method):
    script = tmp_path / "driver.py"
    script.write_text(UNPICKLABLE_DRIVER)
    env = driver_env(**({START_METHOD_ENV: method} if method else {}))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    driver = report["driver"]
    # these are the cases at issue: plain pickle refuses the lambda and the closure
    assert report["picklable"]["lambda"] is False and report["picklable"]["closure"] is False
    expected = {"lambda": lambda x: x ** 2, "closure": lambda x: 7 * x - 2, "main": lambda x: 3 * x + 1}
    for name, formula in expected.items():
        serial, parallel = report["runs"][f"{name}/0"], report["runs"][f"{name}/2"]
        assert [row[:2] for row in serial] == [[x, formula(x)] for x in range(11)]
        assert [row[:2] for row in parallel] == [row[:2] for row in serial], name
        assert {row[2] for row in serial} == {driver}
        worker_pids = {row[2] for row in parallel}
        assert driver not in worker_pids, f"{name} did not run in worker processes"
        mains, parents = {row[4] for row in parallel}, {row[3] for row in parallel}
        if method is None:
            # forked workers: the driver's own __main__ is inherited
            assert mains == {"__main__"} and parents == {driver}
        elif method == "spawn":
            # a spawned worker runs the script as __mp_main__, children of the driver
            assert mains == {"__mp_main__"} and parents == {driver}
        else:
            # forkserver: workers are children of the fork server, not of the driver
            assert driver not in parents


def record_call_op(items, directory, lock):
    with open(os.path.join(directory, f"call-{os.getpid()}-{items[0]}"), "w"):
        pass
    return items


def test_op_argument_that_even_cloudpickle_refuses_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    with pytest.raises(TypeError) as info:
        autoparallelize(record_call_op, list(range(4)), None, str(tmp_path), threading.Lock(),
                        autopara_info={"num_python_subprocesses": 2})
    message = str(info.value)
    assert "record_call_op" in message            # names the operation
    assert f"{START_METHOD_ENV}=fork" in message  # and says what to do
    assert listing(tmp_path) == []         # no item ran
    # ... and the same call works when workers are forked
    monkeypatch.setenv(START_METHOD_ENV, "fork")
    autoparallelize(record_call_op, list(range(4)), None, str(tmp_path), threading.Lock(),
                    autopara_info={"num_python_subprocesses": 2})
    assert len(listing(tmp_path)) == 4
