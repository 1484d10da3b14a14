"""Worker processes an operation cannot subvert (issue 8, points 5 and 8 to 13).

Real worker processes, real forks, real kills and real resource limits: an op that
forks a child which comes back into the worker loop or lingers; programs started by the
op that must not outlive their worker or a killed driver; an initializer that never
returns; BaseExceptions raised by the op; huge timeouts; leaked file descriptors and
memory; more workers asked for than there are chunks.
"""

import collections
import ctypes
import gc
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.connection import Connection

import pytest
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.workers.pool import WorkerPool
from wfl_like.errors import FailedItemsWarning, WorkerInitializerError
from helpers import driver_env, end_process_group, is_running, wait_for

# Every wait on another process: generous, for a loaded machine; a passing run never waits that long.
DEADLINE = 60


def make_list(n):
    return [Atoms("H", positions=[[0.0, 0.0, 0.1 * i]], cell=[3, 3, 3], pbc=True, info={"index": i})
            for i in range(n)]


def indices(configs):
    return [atoms.info["index"] for atoms in configs]


def run(op, inputs, *args, errors="raise", **autopara):
    info = {"num_python_subprocesses": 2, "errors": errors, **autopara}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailedItemsWarning)
        return autoparallelize(op, ConfigSet(inputs), OutputSpec(), *args, autopara_info=info)


def read_pid(path):
    assert wait_for(lambda: os.path.exists(path) and open(path).read().endswith("\n"), DEADLINE), \
        f"{path} was never written"
    return int(open(path).read())


def gone_within_deadline(pid):
    return wait_for(lambda: not is_running(pid), DEADLINE)


# --- point 5: a child forked by the op must not speak for the worker ------------------


def _raw_fork():
    """fork() straight from libc: Python's at-fork hooks do not run in the child."""
    return ctypes.CDLL(None, use_errno=True).fork()


def forking_op(items, how, pid_dir):
    """Each item forks a child that claims other outputs (index + 1000).

    ``return``: the child returns them into the worker loop, and the parent waits for
    the child to end first, so that without protection its reply would be read first.
    ``linger``: the child keeps everything it inherited open, records its pid, and sleeps.
    """
    outputs = [atoms.copy() for atoms in items]
    fork = _raw_fork if how.startswith("raw") else os.fork
    pid = fork()
    if pid == 0:
        if how.endswith("linger"):
            with open(os.path.join(pid_dir, f"child-{os.getpid()}"), "w") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(600)
            os._exit(0)
        for atoms in outputs:
            atoms.info["index"] += 1000
        return outputs
    if how.endswith("return"):
        os.waitpid(pid, 0)
    return outputs


@pytest.mark.parametrize("how", ["return", "raw-return", "linger", "raw-linger"])
def test_child_forked_by_the_op_does_not_misattribute_outputs_or_hang(tmp_path, how):
    for attempt in range(3):
        pid_dir = tmp_path / f"attempt-{attempt}"
        pid_dir.mkdir()
        result = run(forking_op, make_list(8), how, str(pid_dir), num_inputs_per_python_subprocess=2)
        assert indices(result) == list(range(8))
        # a lingering child goes with its worker's process group
        for name in os.listdir(pid_dir):
            assert gone_within_deadline(int(name.split("-")[1]))


def speak_on_the_workers_pipe():
    """Send a reply for another task on this worker's own pipe, as a stray process could."""
    # a forked worker starts with what it inherited frozen, out of the collector's sight
    # (its pipe among them): thawed, so that the pipe can be found
    gc.unfreeze()
    [conn] = [o for o in gc.get_objects() if isinstance(o, Connection) and not o.closed]
    conn.send(("ok", -1, "a stray reply", "", False))
    return "the task's own result"


def test_reply_that_does_not_answer_the_running_task_is_dropped():
    with WorkerPool(1) as pool:
        assert [pool.submit(speak_on_the_workers_pipe).result(timeout=DEADLINE) for _ in range(3)] == \
            ["the task's own result"] * 3


# --- point 8: programs the op starts die with their worker and with the driver ---------


def start_sleep_and_block(items, pid_file, release):
    """Start a long-running program (as a DFT binary would be), record its pid, then block."""
    child = subprocess.Popen(["sleep", "600"])
    with open(pid_file, "w") as f:
        f.write(f"{child.pid}\n")
    while not os.path.exists(release):
        time.sleep(0.05)
    return items


def test_program_started_by_the_op_dies_with_its_worker_on_timeout(tmp_path):
    pid_file = tmp_path / "sleep.pid"
    result = run(start_sleep_and_block, make_list(1), str(pid_file), str(tmp_path / "never"), errors="skip",
                 num_python_subprocesses=1, timeout=5)
    assert indices(result) == []
    assert result.failures[0].reason.startswith("timed out")
    assert gone_within_deadline(read_pid(pid_file))


DRIVER = textwrap.dedent("""
    import sys
    from ase import Atoms
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize
    from wfl_like.stopping import stop_on_signals
    sys.path.insert(0, {tests!r})
    from test_trust_processes import start_sleep_and_block

    pid_file, release, guarded = sys.argv[1], sys.argv[2], sys.argv[3] == "guarded"

    def main():
        autoparallelize(start_sleep_and_block, ConfigSet([Atoms("H")]), OutputSpec(), pid_file, release,
                        autopara_info={{"num_python_subprocesses": 1}})

    if __name__ == "__main__":
        if guarded:
            with stop_on_signals():
                main()
        else:
            main()
""").format(tests=os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("signum, guarded", [
    (signal.SIGKILL, False),
    (signal.SIGTERM, False),
    (signal.SIGTERM, True),
    (signal.SIGINT, False),
])
def test_program_started_by_the_op_dies_when_the_driver_is_signalled(tmp_path, signum, guarded):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pid_file = tmp_path / "sleep.pid"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path / "never"),
                                 "guarded" if guarded else "plain"], cwd=tmp_path, env=driver_env(),
                                stderr=stderr, start_new_session=True)
    try:
        assert wait_for(lambda: pid_file.exists() or proc.poll() is not None, DEADLINE), stderr_path.read_text()
        assert proc.poll() is None, stderr_path.read_text()
        sleep_pid = read_pid(pid_file)
        assert is_running(sleep_pid)
        proc.send_signal(signum)
        proc.wait(timeout=DEADLINE)
        assert gone_within_deadline(sleep_pid), f"the op's program outlived the driver's {signum!r}"
    finally:
        end_process_group(proc)


# --- point 9: an initializer that never returns ---------------------------------------


def initializer_that_hangs(pid_dir):
    with open(os.path.join(pid_dir, f"worker-{os.getpid()}"), "w") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(600)


def identity(items):
    return items


@pytest.mark.parametrize("limits", [{"initializer_timeout": 2}, {"timeout": 2}])
def test_initializer_that_never_returns_fails_the_call_naming_the_limit(tmp_path, limits):
    with pytest.raises(WorkerInitializerError, match="initializer_timeout") as info:
        run(identity, make_list(3), initializer=(initializer_that_hangs, (str(tmp_path),)), **limits)
    assert "2 s" in str(info.value)
    for name in os.listdir(tmp_path):
        assert gone_within_deadline(int(name.split("-")[1]))


def test_initializer_timeout_without_workers_warns_that_it_is_not_enforced():
    with pytest.warns(UserWarning, match="initializer_timeout=5 is not enforced"):
        run(identity, make_list(2), num_python_subprocesses=0, initializer_timeout=5)


# --- point 10: BaseExceptions raised by the op are the item's failure -----------------


class CustomBaseException(BaseException):
    pass


def raise_base_exception(items, kind):
    if any(atoms.info["index"] == 1 for atoms in items):
        raise {"KeyboardInterrupt": KeyboardInterrupt("pressed by the op"), "GeneratorExit": GeneratorExit(),
               "custom": CustomBaseException("custom base")}[kind]
    return items


@pytest.mark.parametrize("kind, name", [("KeyboardInterrupt", "KeyboardInterrupt"), ("GeneratorExit", "GeneratorExit"),
                                        ("custom", "CustomBaseException")])
@pytest.mark.parametrize("where", ["pool", "thread executor", "process executor"])
def test_base_exception_in_the_op_fails_only_its_item(kind, name, where):
    executors = {"thread executor": lambda: ThreadPoolExecutor(2),
                 "process executor": lambda: ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))}
    if where == "pool":
        result = run(raise_base_exception, make_list(4), kind, errors="skip")
    else:
        with executors[where]() as executor:
            result = run(raise_base_exception, make_list(4), kind, errors="skip", executor=executor)
    assert indices(result) == [0, 2, 3]
    [failure] = result.failures
    assert failure.index == 1
    assert name in failure.reason


# --- point 11: every timeout the validation accepts works -----------------------------


@pytest.mark.parametrize("timeout, chunk", [(float("inf"), 1), (1e10, 1), (3 * 86400, 10)])
def test_huge_timeouts_work(timeout, chunk):
    result = run(identity, make_list(12), timeout=timeout, num_inputs_per_python_subprocess=chunk)
    assert indices(result) == list(range(12))
    assert result.failures == []


# --- point 12: poisoned workers are replaced ------------------------------------------

_leaked = []


def limit_open_files(n):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def leak_files(items, n_per_item):
    """Each item leaves ``n_per_item`` files open for good, as a leaky calculator would."""
    for _ in items:
        for _ in range(n_per_item):
            _leaked.append(open(os.devnull))
    return items


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def limit_to_open_files_now_plus(extra):
    limit_open_files(_open_fds() + extra)


def leak_files_and_say_where(items, n_per_item):
    outputs = leak_files(items, n_per_item)
    for atoms in outputs:
        atoms.info["pid"] = os.getpid()
    return outputs


@pytest.mark.parametrize("chunk", [1, 3])
def test_max_items_per_worker_replaces_workers_before_a_leak_hurts(chunk):
    # a worker has room for about 4 items' leaks: replaced after 3, none runs out
    result = run(leak_files_and_say_where, make_list(12), 10, errors="skip", max_items_per_worker=3,
                 initializer=(limit_to_open_files_now_plus, (45,)), num_inputs_per_python_subprocess=chunk)
    assert result.failures == []
    assert indices(result) == list(range(12))
    per_worker = collections.Counter(atoms.info["pid"] for atoms in result)
    assert len(per_worker) >= 4
    assert max(per_worker.values()) <= 3


def test_worker_out_of_file_descriptors_is_replaced_and_its_item_retried():
    result = run(leak_files, make_list(12), 10, errors="skip", initializer=(limit_to_open_files_now_plus, (45,)))
    assert result.failures == []
    assert indices(result) == list(range(12))


def leak_files_and_count(items, n_per_item, directory):
    for atoms in items:
        open(os.path.join(directory, f"attempt-{atoms.info['index']}-{time.time_ns()}"), "w").close()
    return leak_files(items, n_per_item)


def test_item_that_always_runs_out_of_file_descriptors_is_retried_then_fails_with_its_own_reason(tmp_path):
    result = run(leak_files_and_count, make_list(3), 100, str(tmp_path), errors="skip",
                 initializer=(limit_to_open_files_now_plus, (45,)))
    assert indices(result) == []
    assert [f.index for f in result.failures] == [0, 1, 2]
    assert all(f.reason.startswith("OSError: [Errno 24]") for f in result.failures)
    # run on a fresh worker each time: once, then the default 2 retries
    attempts = collections.Counter(name.split("-")[1] for name in os.listdir(tmp_path))
    assert attempts == {"0": 3, "1": 3, "2": 3}


_hoard = []


def limit_memory_now_plus(extra_bytes):
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))


def leak_memory(items):
    for _ in items:
        _hoard.append(bytearray(60 * 2 ** 20))
    return items


def test_worker_out_of_memory_is_replaced_and_its_item_retried():
    autopara = dict(initializer=(limit_memory_now_plus, (300 * 2 ** 20,)), num_python_subprocesses=1)
    result = run(leak_memory, make_list(10), errors="skip", **autopara)
    assert result.failures == []
    assert indices(result) == list(range(10))


# --- point 13: no more workers than chunks; a warning above the CPU count --------------


def record_worker(directory):
    open(os.path.join(directory, f"worker-{os.getpid()}"), "w").close()


def test_no_more_workers_start_than_there_are_chunks(tmp_path, monkeypatch):
    monkeypatch.setenv("WFL_NUM_PYTHON_SUBPROCESSES", "1000")
    with pytest.warns(UserWarning, match=r"1000 worker processes .* only \d+ CPUs"):
        result = autoparallelize(identity, ConfigSet(make_list(3)), OutputSpec(),
                                 autopara_info={"initializer": (record_worker, (str(tmp_path),))})
    assert indices(result) == [0, 1, 2]
    assert 1 <= len(os.listdir(tmp_path)) <= 3

