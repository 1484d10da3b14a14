"""Non-blocking calls: ``autopara_info={"wait": False}`` returns a Future of the call's ConfigSet."""

import time
from concurrent.futures import Future
from pathlib import Path

import ase.io
import numpy as np
import pytest

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.errors import AutoparallelizeError, OutputLockedError
from helpers import cu_cells

RENDEZVOUS_S = 60


def meet(items, mine, other):
    """Each structure as it is, once the other call's worker has said it is running too: two calls
    run one after the other never meet, and the test fails instead of passing by luck."""
    Path(mine).touch()
    deadline = time.monotonic() + RENDEZVOUS_S
    while not Path(other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never appeared: the other call is not running")
        time.sleep(0.05)
    for atoms in items:
        atoms.info["met"] = True
    return items


def drawn(items, _autopara_per_item_info=None):
    for atoms, item_info in zip(items, _autopara_per_item_info):
        atoms.info["draw"] = float(item_info["rng"].uniform())
    return items


def refuse_all(items):
    raise ValueError("refused")


def test_two_calls_run_at_the_same_time_and_write_what_sequential_calls_write(tmp_path):
    for name in ("a", "b"):
        ase.io.write(tmp_path / f"{name}.xyz", cu_cells(4, seed=ord(name)))
    marks = {name: str(tmp_path / f"running_{name}") for name in ("a", "b")}
    futures = [autoparallelize(meet, ConfigSet(tmp_path / f"{name}.xyz"), OutputSpec(tmp_path / f"out_{name}.xyz"),
                               marks[name], marks["b" if name == "a" else "a"],
                               autopara_info={"wait": False, "num_python_subprocesses": 1})
               for name in ("a", "b")]
    assert all(isinstance(future, Future) for future in futures)
    results = [future.result(timeout=120) for future in futures]
    assert [len(list(result)) for result in results] == [4, 4]
    for name in ("a", "b"):
        (tmp_path / f"again_{name}").touch()
        autoparallelize(meet, ConfigSet(tmp_path / f"{name}.xyz"), OutputSpec(tmp_path / f"seq_{name}.xyz"),
                        str(tmp_path / f"again_{name}"), str(tmp_path / f"again_{name}"),
                        autopara_info={"num_python_subprocesses": 0})
        assert (tmp_path / f"out_{name}.xyz").read_text() == (tmp_path / f"seq_{name}.xyz").read_text()


def test_a_shared_generator_gives_each_call_the_streams_of_blocking_calls_in_call_order(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(5))
    blocking = [autoparallelize(drawn, ConfigSet(tmp_path / "in.xyz"), OutputSpec(), rng=rng,
                                autopara_info={"num_python_subprocesses": 0})
                for rng in [np.random.default_rng(3)] * 2]
    rng = np.random.default_rng(3)
    futures = [autoparallelize(drawn, ConfigSet(tmp_path / "in.xyz"), OutputSpec(), rng=rng,
                               autopara_info={"wait": False, "num_python_subprocesses": 0}) for _ in range(2)]
    for future, expected in zip(futures, blocking):
        assert [a.info["draw"] for a in future.result(timeout=60)] == [a.info["draw"] for a in expected]


def test_a_failing_call_raises_from_its_future_and_writes_nothing(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(3))
    future = autoparallelize(refuse_all, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"),
                             autopara_info={"wait": False, "num_python_subprocesses": 0})
    with pytest.raises(AutoparallelizeError, match="refused"):
        future.result(timeout=60)
    assert not (tmp_path / "out.xyz").exists()


def test_bad_arguments_are_refused_at_the_call_not_in_its_future(tmp_path):
    with pytest.raises(TypeError, match="wait must be True or False"):
        autoparallelize(drawn, cu_cells(1), OutputSpec(), autopara_info={"wait": "no"})
    with pytest.raises(TypeError, match="must be iterable"):
        autoparallelize(drawn, 5, OutputSpec(), autopara_info={"wait": False})


def test_no_outputs_give_a_future_of_none():
    future = autoparallelize(drawn, cu_cells(2), None, rng=np.random.default_rng(0),
                             autopara_info={"wait": False, "num_python_subprocesses": 0})
    assert future.result(timeout=60) is None


def test_a_second_call_on_the_same_output_fails_while_the_first_runs_on(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(2))
    out, go = tmp_path / "out.xyz", tmp_path / "go"
    first = autoparallelize(meet, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), str(tmp_path / "m1"), str(go),
                            autopara_info={"wait": False, "num_python_subprocesses": 0})
    deadline = time.monotonic() + RENDEZVOUS_S
    while not (tmp_path / "m1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = autoparallelize(meet, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), str(tmp_path / "m2"), str(go),
                             autopara_info={"wait": False, "num_python_subprocesses": 0})
    with pytest.raises(OutputLockedError, match=r"out\.xyz' is being written by process"):
        second.result(timeout=60)
    go.touch()
    assert len(list(first.result(timeout=60))) == 2
