"""Tests of wfl_like.autoparallelize.workers.pool.WorkerPool with real worker processes."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Executor

import pytest

from wfl_like.autoparallelize.workers.pool import RemoteTraceback, WorkerPool
from wfl_like.errors import TaskTimeoutError, WorkerDiedError, WorkerInitializerError
from helpers import is_running, wait_for


# --- tasks: module level, as workers need them ---------------------------------------


def square(x):
    return x * x


def pid_of_worker():
    return os.getpid()


def slow_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_self(code):
    os._exit(code)


def raise_value_error(message):
    raise ValueError(message)


class CustomError(Exception):
    pass


def raise_custom():
    raise CustomError("custom failure in worker")


def refuse_to_load(what):
    raise RuntimeError(f"{what} refuses to be unpickled")


class LoadsNowhere:
    """Pickles in the worker (by reference to a module-level function) but raises when unpickled.

    Not an exception class that fails to rebuild: whether one does depends on what the
    driver imported (distributed installs tblib's exception pickling, which rebuilds them).
    """

    def __reduce__(self):
        return refuse_to_load, ("LoadsNowhere",)


def return_unloadable():
    return LoadsNowhere()


def raise_with_unloadable():
    raise ValueError("failure with a payload", LoadsNowhere())


def return_lambda():
    return lambda: 1


def initializer_that_raises():
    raise RuntimeError("initializer is broken on purpose")


def write_init_marker(directory):
    with open(os.path.join(directory, f"init-{os.getpid()}"), "x"):
        pass


def read_init_marker(directory):
    return os.getpid(), os.path.exists(os.path.join(directory, f"init-{os.getpid()}"))


def touch_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def write_pid(path):
    # written whole, then renamed: whoever sees the file can read the pid
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(str(os.getpid()))
    os.replace(partial, path)


def wait_for_path(path, timeout=60.0):
    # a deadline, so that a failed test cannot leave a worker blocked; raising makes the
    # task fail loudly instead of looking like it was released
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def touch_and_wait(marker, release):
    """Write this worker's pid to ``marker``, then hold the worker until ``release`` exists."""
    write_pid(marker)
    wait_for_path(release)
    return os.getpid()


def rendezvous(directory, n):
    """Write a pid file in ``directory``, then wait until ``n`` are there.

    Run as ``n`` tasks at once on ``n`` workers, none can return before all ``n`` workers
    have taken one, so each ran on a different worker, and every worker is ready.
    """
    write_pid(os.path.join(directory, f"pid-{os.getpid()}"))
    deadline = time.monotonic() + 60.0
    while len([name for name in os.listdir(directory) if not name.endswith(".partial")]) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {os.listdir(directory)} of {n} workers turned up within 60 s")
        time.sleep(0.01)
    return os.getpid()


# --- helpers -------------------------------------------------------------------------


def worker_children():
    return [p for p in multiprocessing.active_children() if p.name == "wfl_like-worker"]


def all_workers_ready(pool, directory):
    """Return the pool's worker pids once every worker has run a task: all started, ready, idle.

    Without it a worker still starting on a loaded machine leaves its share of the work
    to the others, and tests that count on one task per worker go wrong.
    """
    directory.mkdir()
    n = len(pool.pids)
    pids = [f.result(timeout=90) for f in [pool.submit(rendezvous, str(directory), n) for _ in range(n)]]
    assert sorted(pids) == sorted(pool.pids)
    return pids


@pytest.fixture
def pool():
    p = WorkerPool(2)
    yield p
    p.terminate()


# --- tests ---------------------------------------------------------------------------


def test_is_an_executor_and_returns_results_of_many_submits(pool):
    assert isinstance(pool, Executor)
    futures = [pool.submit(square, i) for i in range(60)]
    assert [f.result() for f in futures] == [i * i for i in range(60)]
    # map comes from Executor and goes through submit
    assert list(pool.map(square, range(10))) == [i * i for i in range(10)]
    # the work ran in the two worker processes, not here
    pids = {f.result() for f in [pool.submit(slow_pid, 0.05) for _ in range(6)]}
    assert os.getpid() not in pids
    assert pids <= set(pool.pids)
    assert len(pool.pids) == 2


def test_max_workers_below_one_is_rejected():
    with pytest.raises(ValueError, match="max_workers"):
        WorkerPool(0)


@pytest.mark.parametrize("task, args, exitcode, words", [
    (kill_self, (), -signal.SIGKILL, "SIGKILL"),
    (exit_self, (7,), 7, "exit code 7"),
])
def test_dead_worker_fails_only_its_future_and_is_replaced(pool, task, args, exitcode, words):
    pids_before = list(pool.pids)
    # a slow task on one worker while the other worker dies
    slow = [pool.submit(slow_pid, 0.5)]
    doomed = pool.submit(task, *args)
    others = slow + [pool.submit(square, i) for i in range(10)]

    exc = doomed.exception()
    assert isinstance(exc, WorkerDiedError)
    assert exc.exitcode == exitcode
    assert words in str(exc)
    assert exc.pid in pids_before
    assert [f.result() for f in others[1:]] == [i * i for i in range(10)]
    assert others[0].result() in pids_before

    # the pool keeps working, with as many workers as before; the dead one is replaced
    assert [f.result() for f in [pool.submit(square, i) for i in range(20)]] == [i * i for i in range(20)]
    assert len(pool.pids) == 2
    assert exc.pid not in pool.pids
    assert set(pool.pids) - set(pids_before)            # a new pid
    assert not is_running(exc.pid)
    ran_on = {f.result() for f in [pool.submit(slow_pid, 0.05) for _ in range(6)]}
    assert exc.pid not in ran_on
    assert ran_on <= set(pool.pids)


def test_several_deaths_in_a_row_keep_the_worker_count(pool):
    dead = set()
    for _ in range(3):
        exc = pool.submit(kill_self).exception()
        assert isinstance(exc, WorkerDiedError)
        dead.add(exc.pid)
    assert len(dead) == 3
    assert pool.submit(square, 3).result() == 9
    assert len(pool.pids) == 2
    assert not dead & set(pool.pids)


def test_exception_travels_back_with_remote_traceback(pool):
    future = pool.submit(raise_value_error, "bad value 42")
    with pytest.raises(ValueError, match="bad value 42") as info:
        future.result()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert "Traceback" in text
    assert "raise_value_error" in text          # the worker's frame
    assert "ValueError: bad value 42" in text

    with pytest.raises(CustomError, match="custom failure") as info:
        pool.submit(raise_custom).result()
    assert "raise_custom" in str(info.value.__cause__)

    # an exception is not a death: the same workers carry on
    pids = list(pool.pids)
    assert pool.submit(square, 5).result() == 25
    assert pool.pids == pids


def test_initializer_that_raises_fails_futures_and_does_not_hang():
    pool = WorkerPool(2, initializer=initializer_that_raises)
    try:
        futures = []
        try:
            for i in range(4):
                futures.append(pool.submit(square, i))
        except WorkerInitializerError:
            pass     # the pool may already know it is broken
        for future in futures:
            exc = future.exception()
            assert isinstance(exc, WorkerInitializerError)
            assert "initializer is broken on purpose" in str(exc)
            assert "initializer_that_raises" in str(exc.__cause__)
        # once broken, submitting says so
        assert wait_for(lambda: pool._broken is not None)
        with pytest.raises(WorkerInitializerError):
            pool.submit(square, 1)
    finally:
        pool.shutdown(wait=True)
    assert worker_children() == []


def test_initializer_runs_once_in_every_worker_before_tasks(tmp_path):
    pool = WorkerPool(2, initializer=write_init_marker, initargs=(str(tmp_path),))
    try:
        seen = [f.result() for f in [pool.submit(read_init_marker, str(tmp_path)) for _ in range(12)]]
        pids = list(pool.pids)
        # a worker that got none of the tasks may still be starting; shut down before its
        # initializer ran, it could be killed as too slow to leave and its marker missing
        assert wait_for(lambda: all((tmp_path / f"init-{pid}").exists() for pid in pids), timeout=60)
    finally:
        pool.shutdown()
    markers = sorted(p.name for p in tmp_path.iterdir())
    assert markers == sorted(f"init-{pid}" for pid in pids)
    # every task found its worker's marker already written
    assert all(found for _, found in seen)
    assert {pid for pid, _ in seen} <= set(pids)


def test_unpicklable_result_gives_type_error_and_pool_keeps_working(pool):
    pids = list(pool.pids)
    bad = pool.submit(return_lambda)
    good = pool.submit(square, 4)
    with pytest.raises(TypeError, match="could not be sent back"):
        bad.result()
    assert good.result() == 16
    assert [f.result() for f in [pool.submit(square, i) for i in range(5)]] == [0, 1, 4, 9, 16]
    assert pool.pids == pids                     # nobody died


@pytest.mark.parametrize("task", [return_unloadable, raise_with_unloadable])
def test_reply_that_does_not_unpickle_fails_only_its_future(pool, tmp_path, task):
    pids = list(pool.pids)
    marker, release = tmp_path / "busy", tmp_path / "release"
    # holds one worker until the bad reply is dealt with, so the bad task runs on the
    # other one while this task is in flight
    busy = pool.submit(touch_and_wait, str(marker), str(release))
    assert wait_for(marker.exists, timeout=60)
    bad = pool.submit(task)
    with pytest.raises(TypeError, match="could not be unpickled") as info:
        bad.result()
    assert "LoadsNowhere refuses to be unpickled" in str(info.value)
    assert not busy.done()
    release.touch()
    assert busy.result() in pids
    assert pool.submit(square, 3).result() == 9
    assert pool.pids == pids                     # nobody died


def test_unpicklable_argument_gives_type_error_and_pool_keeps_working(pool):
    bad = pool.submit(square, lambda: 2)
    with pytest.raises(TypeError, match="picklable"):
        bad.result()
    assert pool.submit(square, 6).result() == 36


def test_shutdown_leaves_no_live_worker():
    pool = WorkerPool(2)
    futures = [pool.submit(square, i) for i in range(10)]
    pids = list(pool.pids)
    assert all(is_running(pid) for pid in pids)
    pool.shutdown(wait=True)
    # shutdown waits for the submitted work
    assert [f.result() for f in futures] == [i * i for i in range(10)]
    assert not any(is_running(pid) for pid in pids)
    assert worker_children() == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)


def test_context_manager_shuts_down():
    with WorkerPool(2) as pool:
        assert pool.submit(square, 7).result() == 49
        pids = list(pool.pids)
    assert not any(is_running(pid) for pid in pids)
    assert worker_children() == []


@pytest.mark.timeout(60)
def test_terminate_kills_busy_workers_at_once(tmp_path):
    pool = WorkerPool(2)
    pids = list(pool.pids)
    markers = [tmp_path / f"started-{i}" for i in range(2)]
    # far longer than the test's timeout: terminate must not wait for these
    busy = [pool.submit(touch_and_sleep, str(m), 1000) for m in markers]
    queued = [pool.submit(square, i) for i in range(5)]
    assert wait_for(lambda: all(m.exists() for m in markers), timeout=60)
    pool.terminate()
    for future in busy:
        assert isinstance(future.exception(), WorkerDiedError)
        assert future.exception().exitcode == -signal.SIGKILL
    assert all(f.cancelled() for f in queued)
    assert not any(is_running(pid) for pid in pids)
    assert worker_children() == []


@pytest.mark.timeout(60)
def test_shutdown_runs_the_queued_tasks_even_when_its_last_worker_dies():
    pool = WorkerPool(1)
    dying = pool.submit(exit_self, 3)
    queued = [pool.submit(square, i) for i in range(4)]
    pool.shutdown(wait=True)          # the dead worker is replaced: the queue still runs
    assert isinstance(dying.exception(), WorkerDiedError)
    assert [f.result() for f in queued] == [0, 1, 4, 9]
    assert worker_children() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_i", range(10))
def test_terminate_while_workers_die_and_tasks_are_queued_returns(round_i):
    # Workers that die while tasks are being handed to them: a task sent to a worker
    # that just died goes back to the queue, and must not be left there after terminate().
    pool = WorkerPool(2)
    futures = [pool.submit(exit_self if i % 2 else square, 1 if i % 2 else i) for i in range(40)]
    time.sleep(0.002 * round_i)       # stop at a different point of the churn each round
    pids = pool.pids
    pool.terminate()
    assert all(f.done() for f in futures)
    assert not any(is_running(pid) for pid in pids)
    assert worker_children() == []


DRIVER_SCRIPT = textwrap.dedent("""
    import sys, time
    from wfl_like.autoparallelize.workers.pool import WorkerPool

    pool = WorkerPool(2)
    busy = pool.submit(time.sleep, 1)      # one worker busy for a short while, one idle
    time.sleep(0.2)
    print(" ".join(str(pid) for pid in pool.pids), flush=True)
    time.sleep(1000)
""")


@pytest.mark.timeout(60)
def test_workers_exit_when_the_driver_is_killed(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_SCRIPT)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        pids = [int(word) for word in driver.stdout.readline().split()]
        assert len(pids) == 2
        assert all(is_running(pid) for pid in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # orphaned workers may stay zombies if nobody reaps them; they must not keep running
        still_running = wait_for(lambda: not any(is_running(pid) for pid in pids), timeout=60.0)
        assert still_running, f"workers {[pid for pid in pids if is_running(pid)]} outlived their driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
        for pid in pids:         # leave nothing behind if the test failed
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


def initializer_that_exits():
    os._exit(4)


class UnpicklableError(Exception):
    """Cannot be pickled however exceptions are reduced (plain pickle or tblib's): it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def initializer_with_unpicklable_error():
    raise UnpicklableError("cannot load the potential")


@pytest.mark.parametrize("initializer, words", [
    (initializer_that_exits, ["exit code 4"]),
    # the error is reported by what can be said of it, as it cannot travel itself
    (initializer_with_unpicklable_error, ["cannot load the potential", "could not be sent back"]),
])
def test_initializer_failure_breaks_the_pool_once_without_restarting_workers(initializer, words):
    pool = WorkerPool(2, initializer=initializer)
    try:
        first_pids = set(pool.pids)
        try:
            error = pool.submit(square, 3).exception(timeout=30)
        except WorkerInitializerError as exc:    # the pool may already know it is broken
            error = exc
        assert isinstance(error, WorkerInitializerError)
        assert all(word in str(error) for word in words), str(error)
        # no restart loop: the pool is broken, not respawning workers that die at start
        time.sleep(0.5)
        assert set(pool.pids) <= first_pids
        with pytest.raises(WorkerInitializerError):
            pool.submit(square, 4)
    finally:
        pool.terminate()
    assert worker_children() == []


# --- submit_with_timeout ---------------------------------------------------------------


# A limit that must not fire on a task that does finish: far above what dispatching a
# short task takes even on a loaded machine.
SAFE_LIMIT = 5.0


@pytest.mark.timeout(90)
def test_task_past_its_timeout_fails_its_worker_is_replaced_and_others_carry_on(pool, tmp_path):
    pids_before = all_workers_ready(pool, tmp_path / "ready")
    busy_marker, release = tmp_path / "busy", tmp_path / "release"
    # one worker busy (no limit) until released, which is after the other task's limit
    busy = pool.submit(touch_and_wait, str(busy_marker), str(release))
    assert wait_for(busy_marker.exists, timeout=60)
    busy_pid = int(busy_marker.read_text())
    # so the doomed task can only go to the other worker, which is ready and idle
    [hung_pid] = set(pids_before) - {busy_pid}
    doomed = pool.submit_with_timeout(0.5, slow_pid, 1000)
    generous = pool.submit_with_timeout(30, slow_pid, 0.2)          # a limit, but far from reached
    queued = [pool.submit(square, i) for i in range(10)]

    exc = doomed.exception()
    assert isinstance(exc, TaskTimeoutError) and isinstance(exc, TimeoutError)
    assert exc.timeout == 0.5
    assert "timed out after 0.5 s" in str(exc)
    assert exc.pid == hung_pid                                      # the worker that ran it was killed
    assert not is_running(hung_pid)

    # those waiting run on the replacement while the other worker's task goes on untouched
    replacement_pid = generous.result()
    assert replacement_pid not in pids_before
    assert [f.result() for f in queued] == [i * i for i in range(10)]
    assert not busy.done()
    release.touch()
    assert busy.result() == busy_pid

    # replaced: as many workers as before, the killed one gone; the pool works
    assert sorted(pool.pids) == sorted([busy_pid, replacement_pid])
    ran_on = {f.result() for f in [pool.submit(slow_pid, 0.05) for _ in range(6)]}
    assert hung_pid not in ran_on and ran_on <= set(pool.pids)


@pytest.mark.timeout(90)
def test_timeouts_on_every_worker_at_once_replace_them_all(pool, tmp_path):
    # every worker ready and idle: each doomed task goes to one of them, never to a
    # replacement (a worker killed early is replaced by one that is not ready yet)
    pids_before = all_workers_ready(pool, tmp_path / "ready")
    doomed = [pool.submit_with_timeout(0.3, slow_pid, 1000) for _ in range(2)]
    errors = [f.exception() for f in doomed]
    assert all(isinstance(e, TaskTimeoutError) for e in errors)
    assert sorted(e.pid for e in errors) == sorted(pids_before)
    # results of later tasks: the dispatcher is past both replacements (it settles a
    # dead worker's future before it starts the replacement)
    assert [f.result() for f in [pool.submit(square, i) for i in range(5)]] == [0, 1, 4, 9, 16]
    assert not set(pool.pids) & set(pids_before)
    assert len(pool.pids) == 2
    assert not any(is_running(pid) for pid in pids_before)


def test_task_within_its_timeout_succeeds_and_keeps_its_worker(pool):
    pids = list(pool.pids)
    assert pool.submit_with_timeout(30, square, 3).result() == 9
    assert pool.submit_with_timeout(30, slow_pid, 0.2).result() in pids
    assert pool.submit_with_timeout(None, square, 4).result() == 16    # None: no limit
    assert pool.pids == pids                                            # nobody was killed


@pytest.mark.timeout(90)
def test_timeout_counts_from_when_the_task_reaches_a_worker(tmp_path):
    marker, release = tmp_path / "busy", tmp_path / "release"
    pool = WorkerPool(1)
    try:
        busy = pool.submit(touch_and_wait, str(marker), str(release))
        waiting = pool.submit_with_timeout(SAFE_LIMIT, slow_pid, 0.05)
        submitted = time.monotonic()
        assert wait_for(marker.exists, timeout=60)
        # The only worker is held until the waiting task has been queued for well over its
        # limit: a limit counted from submit would kill the worker as soon as it got it.
        time.sleep(max(0.0, submitted + SAFE_LIMIT + 1.0 - time.monotonic()))
        assert not waiting.done()
        release.touch()
        assert waiting.result() == busy.result()                       # same worker, not killed
        assert pool.pids == [busy.result()]
    finally:
        pool.terminate()
    assert worker_children() == []


def test_forked_workers_start_with_the_drivers_objects_frozen_and_the_driver_does_not():
    """A forked worker's collector never walks the heap it inherited; the driver's is as it was."""
    import gc
    import multiprocessing

    assert gc.get_freeze_count() == 0
    fork_pool = WorkerPool(1, mp_context=multiprocessing.get_context("fork"))
    try:
        in_worker = fork_pool.submit(gc.get_freeze_count).result(timeout=60)
    finally:
        fork_pool.shutdown()
    assert in_worker > 1000
    assert gc.get_freeze_count() == 0


def test_a_driver_that_froze_objects_itself_keeps_them_frozen():
    import gc
    import multiprocessing

    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        fork_pool = WorkerPool(1, mp_context=multiprocessing.get_context("fork"))
        try:
            # (frozen objects still die when their last reference goes: the count moves a little)
            assert fork_pool.submit(gc.get_freeze_count).result(timeout=60) > frozen // 2
        finally:
            fork_pool.shutdown()
        # not thawed by the fork, which would have set it to 0
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
