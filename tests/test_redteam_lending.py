"""Red-team tests of the pool's data path: lent inherited inputs, tasks sent ahead,
results unpickled where they are asked for, and the collector's pause.

The promises tried here: a forked worker that lends the operation its own inherited
inputs gives the outputs of a serial run and of spawned workers, whatever the operation
does to them and whatever the items share; a task sent ahead runs exactly once, even when
the worker it was sent to dies, times out or is retired; an output that does not unpickle
in the driver fails its item with a TypeError; and the cyclic collector is paused only
while a waited call gathers outputs computed in other processes, and always restored.

Seven of them were breaks when they were written, now fixed: a structure that something
else held too (another input's info, a global, an argument of the operation) was lent; a
task bigger than the pipe, sent ahead, deadlocked the dispatcher and its worker; and an
output whose unpickling called sys.exit() ended the call.  The others confirm what held.
"""

import errno
import gc
import os
import pickle
import signal
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase import Atoms

from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.errors import AutoparallelizeError

START_ENV = "WFL_LIKE_START_METHOD"


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv(START_ENV, raising=False)
    monkeypatch.delenv("WFL_LIKE_PROGRESS", raising=False)
    monkeypatch.delenv("WFL_EXPYRE_INFO", raising=False)


@pytest.fixture(autouse=True)
def _collector_restored():
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def structure(i, n_atoms=2):
    positions = np.zeros((n_atoms, 3))
    positions[:, 2] = 0.1 * i
    positions[:, 0] = np.arange(n_atoms) * 0.7
    atoms = Atoms("H" * n_atoms, positions=positions, cell=[3, 3, 4], pbc=[True, False, True])
    atoms.info["label"] = i
    return atoms


def run(op, inputs, workers, chunk=1, start=None, monkeypatch=None, op_kwargs=None, **more):
    """The outputs and failures of ``op`` over ``inputs`` (``more``: AutoparaInfo options)."""
    if start is not None:
        monkeypatch.setenv(START_ENV, start)
    info = {"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk, **more}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = autoparallelize(op, inputs, OutputSpec(), autopara_info=info, **(op_kwargs or {}))
    finally:
        if start is not None:
            monkeypatch.delenv(START_ENV)
    return list(result), result.failures


def snapshot(atoms):
    """What an output is, field by field, for comparisons."""
    return {
        "positions": atoms.positions.tolist(),
        "numbers": atoms.numbers.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
        "arrays": sorted(atoms.arrays),
        "info": {k: (snapshot(v) if isinstance(v, Atoms) else
                     v.tolist() if isinstance(v, np.ndarray) else v)
                 for k, v in atoms.info.items() if k not in ("pid",)},
    }


def assert_same(expected, got):
    assert [snapshot(a) for a in expected] == [snapshot(b) for b in got]


# --- operations (module level: spawned workers import them) --------------------------


def shift(items):
    """Changes its inputs in place and returns them."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["count"] = atoms.info.get("count", 0) + 1
    return items


def shift_and_copy_reference(items):
    """Changes its inputs in place; an item whose info holds another structure gets that
    structure's positions as it sees them now."""
    for atoms in items:
        atoms.positions += 1.0
        ref = atoms.info.get("ref")
        if ref is not None:
            atoms.info["ref_z"] = float(ref.positions[0, 2])
            del atoms.info["ref"]
    return items


# structures of the caller's that the operation reads (a reference set kept in a module)
REFERENCES = []


def shift_and_read_references(items):
    """Changes its inputs in place, and records the first atom's height of each reference structure."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["refs_z"] = [float(ref.positions[0, 2]) for ref in REFERENCES]
    return items


def shift_then_fail(items, bad=4):
    """Changes its inputs in place, then fails the chunk holding label ``bad``."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["count"] = atoms.info.get("count", 0) + 1
    if any(atoms.info["label"] == bad for atoms in items):
        raise ValueError(f"label {bad} is refused")
    return items


# --- lending: what the reference counts do not see -----------------------------------


def test_plain_items_with_in_place_changes_and_failures_give_the_serial_outputs(monkeypatch):
    items = [structure(i) for i in range(10)]
    before = round_trip(items)
    serial, serial_failures = run(shift_then_fail, items, 0, 3, errors="skip")
    forked, failures = run(shift_then_fail, items, 1, 3, "fork", monkeypatch, errors="skip")
    assert [f.index for f in failures] == [f.index for f in serial_failures] == [4]
    assert_same(serial, forked)
    assert [a.info["count"] for a in forked] == [1] * 9
    assert_same(before, items)


def test_a_structure_another_input_holds_in_its_info_is_not_lent(monkeypatch):
    items = [structure(i) for i in range(4)]
    items[3].info["ref"] = items[0]         # item 0 is plain and held once by its own parts
    serial, _ = run(shift_and_copy_reference, items, 0, 1)
    spawned, _ = run(shift_and_copy_reference, items, 1, 1, "spawn", monkeypatch)
    forked, _ = run(shift_and_copy_reference, items, 1, 1, "fork", monkeypatch)
    assert serial[3].info["ref_z"] == spawned[3].info["ref_z"] == 0.0
    assert forked[3].info["ref_z"] == 0.0, "the op saw item 0 as another chunk's op had changed it"


def test_a_structure_a_module_global_holds_is_not_lent(monkeypatch):
    items = [structure(i) for i in range(4)]
    REFERENCES[:] = [items[0]]
    try:
        serial, _ = run(shift_and_read_references, items, 0, 1)
        forked, _ = run(shift_and_read_references, items, 1, 1, "fork", monkeypatch)
    finally:
        REFERENCES.clear()
    assert [a.info["refs_z"] for a in serial] == [[0.0]] * 4
    assert [a.info["refs_z"] for a in forked] == [[0.0]] * 4


def shift_relative_to(items, reference):
    """Changes its inputs in place, and records each one's height over ``reference`` (an argument)."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["over_reference"] = float(atoms.positions[0, 2] - reference.positions[0, 2])
    return items


def test_an_input_also_given_as_an_argument_is_not_lent(monkeypatch):
    items = [structure(i) for i in range(4)]
    serial, _ = run(shift_relative_to, items, 0, 1, op_kwargs={"reference": items[0]})
    forked, _ = run(shift_relative_to, items, 1, 1, "fork", monkeypatch, op_kwargs={"reference": items[0]})
    assert np.allclose([a.info["over_reference"] for a in serial], [1.0, 1.1, 1.2, 1.3])
    assert np.allclose([a.info["over_reference"] for a in forked], [1.0, 1.1, 1.2, 1.3])


def test_a_part_of_an_input_given_as_an_argument_is_not_lent(monkeypatch):
    from types import SimpleNamespace

    items = [structure(i) for i in range(4)]
    kwargs = {"reference": SimpleNamespace(positions=items[0].positions)}    # item 0's own array
    serial, _ = run(shift_relative_to, items, 0, 1, op_kwargs=kwargs)
    forked, _ = run(shift_relative_to, items, 1, 1, "fork", monkeypatch, op_kwargs=kwargs)
    assert np.allclose([a.info["over_reference"] for a in serial], [1.0, 1.1, 1.2, 1.3])
    assert np.allclose([a.info["over_reference"] for a in forked], [1.0, 1.1, 1.2, 1.3])


def sharing_kinds():
    """Ways two inputs of different chunks can share a part, each a function of the items."""
    def views(items):
        items[3].info["view"] = items[0].arrays["positions"].reshape(-1)

    def view_array(items):
        items[3].new_array("seen", items[0].arrays["positions"][:, 2].copy())
        items[0].arrays["seen"] = items[3].arrays["seen"][:]       # a view of the other's array

    def cell(items):
        items[3].__dict__["_cellobj"] = items[0].__dict__["_cellobj"]

    def cell_array(items):
        items[3].cell.__dict__["array"] = items[0].cell.array

    def info_dict(items):
        items[3].info = items[0].info

    def arrays_dict(items):
        items[3].arrays = items[0].arrays

    def pbc(items):
        items[3].__dict__["_pbc"] = items[0].__dict__["_pbc"]

    def nested(items):
        inner = np.zeros(3)
        items[0].info["deep"] = {"x": [inner]}
        items[3].info["deep"] = ({"y": inner},)

    return [views, view_array, cell, cell_array, info_dict, arrays_dict, pbc, nested]


def change_everything(items):
    """Changes every part of its inputs in place."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.cell.array[0, 0] += 1.0
        atoms.pbc[1] = not atoms.pbc[1]
        atoms.info["count"] = atoms.info.get("count", 0) + 1
        for value in atoms.info.values():
            if isinstance(value, np.ndarray):
                value += 1.0
            elif isinstance(value, dict):
                value["touched"] = value.get("touched", 0) + 1
            elif isinstance(value, tuple) and value and isinstance(value[0], dict):
                value[0]["touched"] = value[0].get("touched", 0) + 1
        for name in list(atoms.arrays):
            if name not in ("numbers", "positions"):
                atoms.arrays[name] += 1.0
    return items


def freeze(atoms):
    out = snapshot(atoms)
    out["arrays"] = {name: atoms.arrays[name].tolist() for name in atoms.arrays}
    out["info"] = repr(sorted((k, repr(v)) for k, v in atoms.info.items()))
    return out


@pytest.mark.parametrize("kind", sharing_kinds(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("workers", [1, 2])
def test_parts_shared_across_chunks_are_not_lent(monkeypatch, kind, workers):
    items = [structure(i) for i in range(6)]
    kind(items)
    before = [freeze(a) for a in items]
    serial, _ = run(change_everything, items, 0, 1)
    assert [freeze(a) for a in items] == before
    forked, _ = run(change_everything, items, workers, 1, "fork", monkeypatch)
    assert [freeze(a) for a in forked] == [freeze(a) for a in serial]
    assert [freeze(a) for a in items] == before


def reshape_and_reorder(items):
    """Changes its inputs' sizes, cells and arrays in place, and returns them reversed, one twice."""
    for atoms in items:
        del atoms[-1]
        atoms.set_cell(atoms.cell.array * 1.5, scale_atoms=True)
        atoms.new_array("charges_like", np.arange(len(atoms), dtype=float))
        atoms.info["own_view"] = atoms.positions[0]
        atoms.info.pop("label_copy", None)
    out = list(reversed(items))
    out[0] = items[0]
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_ops_that_resize_and_reorder_their_inputs_give_the_serial_outputs(monkeypatch, chunk):
    items = [structure(i, n_atoms=3 + i % 2) for i in range(7)]
    before = [freeze(a) for a in items]
    serial, _ = run(reshape_and_reorder, items, 0, chunk)
    forked, _ = run(reshape_and_reorder, items, 2, chunk, "fork", monkeypatch)
    spawned, _ = run(reshape_and_reorder, items, 2, chunk, "spawn", monkeypatch)
    assert [freeze(a) for a in forked] == [freeze(a) for a in serial] == [freeze(a) for a in spawned]
    assert [freeze(a) for a in items] == before


# --- send-ahead ----------------------------------------------------------------------

BIG_TASKS_SCRIPT = r"""
import os, sys, time, warnings
import numpy as np
from ase import Atoms
from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize

N = {n_atoms}
MODE = "{mode}"

def big(i):
    atoms = Atoms("H" * N, positions=np.zeros((N, 3)) + 0.1 * i)
    atoms.info["label"] = i
    return atoms

def op(items):
    if MODE == "rerun" and len(items) > 1 and any(atoms.info["label"] == 1 for atoms in items):
        raise ValueError("the chunk holding label 1 fails: its items are run again one by one, by value")
    for atoms in items:
        if atoms.info["label"] == 2:
            time.sleep(0.5)         # after quick ones: the next task is sent ahead into the pipe
    return items

if __name__ == "__main__":
    os.environ["WFL_LIKE_START_METHOD"] = "spawn" if MODE == "spawn" else "fork"
    inputs = (big(i) for i in range(5)) if MODE == "iterator" else [big(i) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = autoparallelize(op, inputs, OutputSpec(), autopara_info={{
            "num_python_subprocesses": 1, "num_inputs_per_python_subprocess": 3 if MODE == "rerun" else 1,
            "errors": "skip"}})
    print("DONE", len(list(result)), len(result.failures))
"""


def run_script(tmp_path, text, limit):
    """Run ``text`` as a script in a fresh interpreter; its stdout, or None if it ran past ``limit`` s."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in (START_ENV, "WFL_NUM_PYTHON_SUBPROCESSES")}
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=limit,
                              env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return None
    return done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["iterator", "rerun"])
def test_small_tasks_sent_ahead_behind_a_slow_one_do_not_hang(tmp_path, mode):
    out = run_script(tmp_path, BIG_TASKS_SCRIPT.format(n_atoms=100, mode=mode), 60)
    assert out is not None and "DONE 5 0" in out, out


@pytest.mark.parametrize("mode", ["iterator", "rerun", "spawn"])
def test_big_tasks_sent_ahead_behind_a_slow_one_do_not_hang(tmp_path, mode):
    # 10000 atoms: a few hundred kB per task and per reply, more than a pipe holds
    out = run_script(tmp_path, BIG_TASKS_SCRIPT.format(n_atoms=10000, mode=mode), 8)
    assert out is not None, "the call hung"
    assert "DONE 5 0" in out, out


def count_runs_and_misbehave(items, where, how, bad=5):
    """Records each run of each item (a line per run in ``where``/label); the first run of
    label ``bad`` then misbehaves: ``how`` is exit, sigkill, sleep (past the time limit) or memory."""
    for atoms in items:
        label = atoms.info["label"]
        path = os.path.join(where, str(label))
        first = not os.path.exists(path)
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if label == bad and first:
            if how == "exit":
                os._exit(3)
            elif how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "sleep":
                time.sleep(20)
            elif how == "memory":
                raise MemoryError("pretend")
            elif how == "emfile":
                raise OSError(errno.EMFILE, "Too many open files (pretend)")
        atoms.info["pid"] = os.getpid()
        atoms.positions += 1.0
    return items


def runs_of(where, n):
    return [len(open(os.path.join(where, str(i))).read().split()) if os.path.exists(os.path.join(where, str(i)))
            else 0 for i in range(n)]


# a hang (a task sent ahead to a worker that died, never sent again) fails the test
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "sigkill", "sleep", "memory", "emfile"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("as_list", [True, False])
def test_tasks_sent_ahead_of_a_dying_worker_run_once_elsewhere(monkeypatch, tmp_path, how, workers, as_list):
    n = 14
    items = [structure(i) for i in range(n)]
    before = round_trip(items)
    inputs = items if as_list else iter(items)
    more = {"timeout": 1.0} if how == "sleep" else {}
    outputs, failures = run(count_runs_and_misbehave, inputs, workers, 1, "fork", monkeypatch, errors="skip",
                            op_kwargs={"where": str(tmp_path), "how": how}, retries=1, **more)
    runs = runs_of(tmp_path, n)
    assert runs[:5] + runs[6:] == [1] * (n - 1), runs
    kept = list(range(n))
    if how == "sleep":
        # a time limit is not retried: the item fails, as timed out
        assert runs[5] == 1 and [f.index for f in failures] == [5], (runs, failures)
        assert "timed out" in str(failures[0])
        kept.remove(5)
    else:
        assert runs[5] == 2 and failures == [], (runs, failures)
    assert [a.info["label"] for a in outputs] == kept
    assert np.allclose([a.positions[0, 2] for a in outputs], [0.1 * i + 1.0 for i in kept])
    assert_same(before, items)


def record_pid(items):
    for atoms in items:
        atoms.info["pid"] = os.getpid()
        atoms.info["seen_pid"] = os.getpid()
        atoms.positions += 1.0
    return items


@pytest.mark.parametrize("as_list", [True, False])
def test_max_items_per_worker_one_retires_each_worker_after_its_item(monkeypatch, as_list):
    items = [structure(i) for i in range(8)]
    before = round_trip(items)
    outputs, failures = run(record_pid, items if as_list else iter(items), 2, 1, "fork", monkeypatch,
                            max_items_per_worker=1)
    assert failures == []
    assert len({a.info["seen_pid"] for a in outputs}) == 8
    assert [a.info["label"] for a in outputs] == list(range(8))
    assert np.allclose([a.positions[0, 2] for a in outputs], [0.1 * i + 1.0 for i in range(8)])
    assert_same(before, items)


# --- deferred unpickling ---------------------------------------------------------------

DRIVER_PID = os.getpid()
# what the driver saw while unpickling outputs: whether the collector ran
SEEN_IN_DRIVER = []


def _rebuild(value, driver_pid, how):
    if os.getpid() == driver_pid:
        SEEN_IN_DRIVER.append(gc.isenabled())
        if how == "raise":
            raise ValueError("this object does not unpickle in the driver")
        if how == "interrupt":
            raise KeyboardInterrupt
        if how == "exit":
            raise SystemExit(5)
    return Payload(value, how)


class Payload:
    """An object of an output's info that unpickles as told in the driver's process only."""

    def __init__(self, value, how="ok"):
        self.value, self.how = value, how

    def __reduce__(self):
        return _rebuild, (self.value, DRIVER_PID, self.how)

    def __eq__(self, other):
        return type(other) is Payload and other.value == self.value


def attach_payload(items, how="raise", bad=(4,)):
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["payload"] = Payload(atoms.info["label"], how if atoms.info["label"] in bad else "ok")
    return items


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("as_list", [True, False])
def test_an_output_that_does_not_unpickle_in_the_driver_fails_its_item_with_a_type_error(
        monkeypatch, chunk, as_list):
    items = [structure(i) for i in range(9)]
    inputs = items if as_list else iter(items)
    outputs, failures = run(attach_payload, inputs, 2, chunk, "fork", monkeypatch, errors="skip")
    assert [f.index for f in failures] == [4], failures
    assert "TypeError" in str(failures[0]) or "unpickled" in str(failures[0]), failures[0]
    assert [a.info["label"] for a in outputs] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert [a.info["payload"].value for a in outputs] == [0, 1, 2, 3, 5, 6, 7, 8]


def test_an_output_that_does_not_unpickle_fails_the_call_with_errors_raise(monkeypatch):
    items = [structure(i) for i in range(6)]
    with pytest.raises(AutoparallelizeError) as caught:
        run(attach_payload, items, 2, 2, "fork", monkeypatch)
    assert "unpickled" in str(caught.value) or "TypeError" in str(caught.value)


# --- the collector's pause --------------------------------------------------------------


def note_collector(items):
    """Records whether the cyclic collector runs in the process running the op."""
    for atoms in items:
        atoms.info["gc_enabled"] = gc.isenabled()
        atoms.info["pid"] = os.getpid()
    return items


@pytest.mark.parametrize("enabled", [True, False])
def test_a_pool_call_pauses_the_collector_while_it_gathers_and_restores_it(monkeypatch, enabled):
    gc.enable() if enabled else gc.disable()
    SEEN_IN_DRIVER.clear()
    items = [structure(i) for i in range(6)]
    outputs, failures = run(attach_payload, items, 2, 2, "fork", monkeypatch, op_kwargs={"bad": ()})
    assert failures == []
    assert SEEN_IN_DRIVER and not any(SEEN_IN_DRIVER), "outputs were unpickled with the collector running"
    assert gc.isenabled() == enabled


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("max_items", [None, 1])
def test_forked_workers_run_with_the_collector_as_the_driver_had_it(monkeypatch, enabled, max_items):
    gc.enable() if enabled else gc.disable()
    outputs, _ = run(note_collector, [structure(i) for i in range(4)], 2, 1, "fork", monkeypatch,
                     max_items_per_worker=max_items)
    assert [a.info["gc_enabled"] for a in outputs] == [enabled] * 4
    assert gc.isenabled() == enabled


def test_serial_calls_and_calls_on_the_callers_executor_do_not_pause_the_collector(monkeypatch):
    gc.enable()
    serial, _ = run(note_collector, [structure(i) for i in range(4)], 0, 1)
    assert [a.info["gc_enabled"] for a in serial] == [True] * 4
    with ThreadPoolExecutor(2) as executor:
        threaded, _ = run(note_collector, [structure(i) for i in range(4)], 0, 1, executor=executor)
    assert [a.info["gc_enabled"] for a in threaded] == [True] * 4
    assert gc.isenabled()


def test_the_collector_is_restored_when_the_call_raises(monkeypatch):
    gc.enable()
    with pytest.raises(AutoparallelizeError):
        run(shift_then_fail, [structure(i) for i in range(6)], 2, 2, "fork", monkeypatch)
    assert gc.isenabled()


def test_the_collector_is_restored_when_unpickling_in_the_driver_is_interrupted(monkeypatch):
    gc.enable()
    SEEN_IN_DRIVER.clear()
    with pytest.raises(KeyboardInterrupt):
        run(attach_payload, [structure(i) for i in range(6)], 2, 2, "fork", monkeypatch,
            op_kwargs={"how": "interrupt"})
    assert len(SEEN_IN_DRIVER) == 5 and not any(SEEN_IN_DRIVER)
    assert gc.isenabled()


def test_overlapping_calls_in_threads_leave_the_collector_running(monkeypatch):
    gc.enable()
    monkeypatch.setenv(START_ENV, "fork")

    def one(k):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(autoparallelize(note_collector, [structure(i) for i in range(4 + k)], OutputSpec(),
                                        autopara_info={"num_python_subprocesses": 1,
                                                       "num_inputs_per_python_subprocess": 1}))

    with ThreadPoolExecutor(3) as threads:
        results = list(threads.map(one, range(3)))
    assert [len(r) for r in results] == [4, 5, 6]
    assert gc.isenabled()


def test_an_output_whose_unpickling_exits_fails_its_item(monkeypatch):
    gc.enable()
    items = [structure(i) for i in range(6)]
    try:
        outputs, failures = run(attach_payload, items, 2, 1, "fork", monkeypatch, errors="skip",
                                op_kwargs={"how": "exit"})
    except SystemExit:
        pytest.fail("SystemExit raised while unpickling an output ended the call")
    assert [f.index for f in failures] == [4]
    assert gc.isenabled()
