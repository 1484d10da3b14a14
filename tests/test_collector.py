"""The cyclic garbage collector is paused while a driver gathers outputs computed in other
processes, and is as it was everywhere else: in the workers, in serial runs, after the call."""

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from ase import Atoms

from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.collector import collector_paused


@pytest.fixture(autouse=True)
def _collector_on(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    was = gc.isenabled()
    gc.enable()
    yield
    # as it was, whatever the test left: a later test must not start with the collector off
    if was:
        gc.enable()
    else:
        gc.disable()


def note_collector(items):
    for atoms in items:
        atoms.info["collector"] = gc.isenabled()
    return items


def structures(n=8):
    return [Atoms("H", positions=[[0.0, 0.0, float(i)]]) for i in range(n)]


def run(workers, executor=None):
    info = {"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": 2}
    if executor is not None:
        info["executor"] = executor
    return list(autoparallelize(note_collector, structures(), OutputSpec(), autopara_info=info))


def test_a_pool_call_leaves_the_collector_running_in_its_workers_and_after():
    outputs = run(2)
    assert [a.info["collector"] for a in outputs] == [True] * 8
    assert gc.isenabled()


@pytest.mark.parametrize("executor", [None, "threads"])
def test_an_operation_run_in_this_process_has_the_collector_running(executor):
    with ThreadPoolExecutor(2) as threads:
        outputs = run(0 if executor is None else 2, threads if executor else None)
    assert [a.info["collector"] for a in outputs] == [True] * 8
    assert gc.isenabled()


def test_a_collector_the_caller_stopped_stays_stopped():
    gc.disable()
    run(2)
    assert not gc.isenabled()


def test_overlapping_pauses_resume_the_collector_once_the_last_ends():
    first_in, second_done = threading.Event(), threading.Event()

    def first():
        with collector_paused():
            first_in.set()
            second_done.wait(30)
            assert not gc.isenabled()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(30)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()          # the first pause is still on
    second_done.set()
    thread.join(30)
    assert gc.isenabled()


def test_a_process_forked_during_a_pause_starts_with_the_collector_as_before():
    read, write = os.pipe()
    with collector_paused():
        pid = os.fork()
        if pid == 0:
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0
    os.close(read)
