"""WorkerPool(send_ahead=True): a quick worker finds its next task in its pipe.

A task sent ahead has not begun while the task before it runs: when that worker dies, times
out or is poisoned, the task sent ahead runs in another worker, once, and never fails for it.
"""

import logging
import os
import time

import pytest

from wfl_like.autoparallelize.workers.pool import WorkerPool
from wfl_like.errors import TaskTimeoutError, WorkerDiedError, WorkerPoisonedError


def square(x):
    return x * x


def record_pid(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def sleep_then_exit(seconds):
    time.sleep(seconds)
    os._exit(7)


def sleep_then_run_out_of_memory(seconds):
    time.sleep(seconds)
    raise MemoryError("no memory left for the potential")


def sleep_forever():
    time.sleep(1000)


@pytest.fixture
def quick_pool():
    """One worker, known to be quick: each of its tasks so far took well under a second."""
    pool = WorkerPool(1, send_ahead=1.0)
    assert [pool.submit(square, i).result() for i in range(3)] == [0, 1, 4]
    yield pool
    pool.terminate()


def sent_ahead(caplog):
    return [r.getMessage() for r in caplog.records if "sent ahead" in r.getMessage()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first, error", [
    ((sleep_then_exit, 0.5), WorkerDiedError),
    ((sleep_then_run_out_of_memory, 0.5), WorkerPoisonedError),
])
def test_a_task_sent_ahead_of_one_that_ends_its_worker_runs_once_in_another(quick_pool, tmp_path, caplog,
                                                                             first, error):
    caplog.set_level(logging.DEBUG, logger="wfl_like.autoparallelize.workers.pool")
    [dead_pid] = quick_pool.pids
    doomed = quick_pool.submit(*first)
    marker = tmp_path / "ran"
    follower = quick_pool.submit(record_pid, str(marker))
    with pytest.raises(error):
        doomed.result()
    pid = follower.result()
    assert pid != dead_pid
    assert marker.read_text().split() == [str(pid)]          # once, in the replacement
    assert sent_ahead(caplog), "the second task was not sent ahead: this test did not test it"


@pytest.mark.timeout(120)
def test_a_task_sent_ahead_of_one_that_times_out_runs_in_the_replacement(quick_pool, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="wfl_like.autoparallelize.workers.pool")
    [hung_pid] = quick_pool.pids
    doomed = quick_pool.submit_with_timeout(0.5, sleep_forever)
    marker = tmp_path / "ran"
    follower = quick_pool.submit_with_timeout(30, record_pid, str(marker))
    assert isinstance(doomed.exception(), TaskTimeoutError)
    pid = follower.result()
    assert pid != hung_pid and marker.read_text().split() == [str(pid)]
    assert sent_ahead(caplog)


def test_many_quick_tasks_sent_ahead_each_return_their_own_result():
    pool = WorkerPool(3, send_ahead=1.0)
    try:
        futures = [pool.submit(square, i) for i in range(600)]
        assert [f.result() for f in futures] == [i * i for i in range(600)]
    finally:
        pool.shutdown()


def test_without_send_ahead_no_task_is_sent_to_a_busy_worker(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="wfl_like.autoparallelize.workers.pool")
    pool = WorkerPool(1)
    try:
        futures = [pool.submit(square, i) for i in range(50)]
        assert [f.result() for f in futures] == [i * i for i in range(50)]
    finally:
        pool.shutdown()
    assert sent_ahead(caplog) == []
