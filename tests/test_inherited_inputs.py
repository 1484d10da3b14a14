"""Forked workers take a chunk's inputs from the list they inherited, not from the pipe.

With ``fork``, a call whose inputs are a list or a tuple sends each chunk, on its first
run, as its place in the inputs; the worker lends the operation its own inherited items
where no part of them is shared (and no item appears twice), and copies them otherwise.
Checked here: the outputs are those of a serial run and of ``spawn`` workers (which are
sent the items), whatever the operation does to its inputs in place, whether its worker
dies mid-chunk, is retired or is replaced, and whatever the items share; the caller's
objects never change; and the path is taken only where it should be.
"""

import gc
import os
import pickle
import signal
import sys
import types
import warnings
import weakref

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.workers import isolation
from wfl_like.structures import same_objects

START_ENV = "WFL_LIKE_START_METHOD"


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv("WFL_NUM_PYTHON_SUBPROCESSES", raising=False)
    monkeypatch.delenv(START_ENV, raising=False)


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def structure(i):
    atoms = Atoms("CuH", positions=[[0.0, 0.0, 0.1 * i], [1.0, 1.0, 1.0]], cell=[3, 3, 4], pbc=[True, False, True])
    atoms.info["label"] = i
    return atoms


def varied(n=12):
    """Plain structures, and some that are not (calculator, constraint, object in info), one of them twice."""
    items = [structure(i) for i in range(n)]
    items[3].calc = SinglePointCalculator(items[3], energy=2.0, forces=np.zeros((2, 3)))
    items[5].set_constraint(FixAtoms([0]))
    items[7].info["thing"] = Atoms("H")
    items.append(items[1])
    return items


def run(op, inputs, workers, chunk=3, start=None, monkeypatch=None, op_kwargs=None, **more):
    """The outputs and failures of ``op`` over ``inputs`` (``more``: AutoparaInfo options)."""
    if start is not None:
        monkeypatch.setenv(START_ENV, start)
    info = {"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk, **more}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = autoparallelize(op, inputs, OutputSpec(), autopara_info=info, **op_kwargs_of(op),
                                 **(op_kwargs or {}))
    if start is not None:
        monkeypatch.delenv(START_ENV)
    return list(result), result.failures


def op_kwargs_of(op):
    return {"rng": np.random.default_rng(7)} if op is shift_with_rng else {}


def assert_same_outputs(expected, got, strictly=True):
    """Outputs alike: in every respect (:func:`same_objects`), or, against a serial run, whose
    outputs of structures with a calculator or constraints made one pickle trip fewer, as
    structures with their info, constraints and results."""
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        a.info.pop("pid", None)
        b.info.pop("pid", None)
        if strictly:
            assert same_objects(a, b)
        else:
            assert a == b and a.info == b.info and repr(a.constraints) == repr(b.constraints)
            assert (a.calc is None) == (b.calc is None)
            if a.calc is not None:
                assert a.calc.results.keys() == b.calc.results.keys()
                assert all(np.array_equal(a.calc.results[k], b.calc.results[k]) for k in a.calc.results)


# --- operations (module level: spawned workers import them) --------------------------


def shift_with_rng(items, _autopara_per_item_info):
    """Changes its inputs in place and returns them, with a draw of each item's own generator."""
    for atoms, info in zip(items, _autopara_per_item_info):
        atoms.positions += 1.0
        atoms.info["draw"] = float(info["rng"].random())
        atoms.info["item_i"] = info["item_i"]
    return items


def shift_then_fail(items, bad=4):
    """Changes its inputs in place, then fails the chunk holding label ``bad``: the chunk is rerun item by item."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["times_shifted"] = atoms.info.get("times_shifted", 0) + 1
        atoms.info["pid"] = os.getpid()
    if any(atoms.info["label"] == bad for atoms in items):
        raise ValueError(f"label {bad} is refused")
    return items


def shift_then_die_once(items, marker):
    """Changes its inputs in place; the first worker to meet label 4 dies mid-chunk (``os._exit``)."""
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["times_shifted"] = atoms.info.get("times_shifted", 0) + 1
        if atoms.info["label"] == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
    return items


# --- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("chunk", [1, 3, "auto"])
def test_outputs_are_those_of_a_serial_run_whatever_the_start_method(monkeypatch, start, chunk):
    items = varied()
    before = round_trip(items)
    serial, _ = run(shift_with_rng, items, 0, chunk)
    pooled, failures = run(shift_with_rng, items, 2, chunk, start, monkeypatch)
    assert failures == []
    assert [a.info["item_i"] for a in pooled] == list(range(len(items)))
    assert_same_outputs(serial, pooled, strictly=False)
    assert same_objects(before, round_trip(items))      # the caller's objects, sharing included


def test_forked_and_spawned_workers_give_the_same_outputs_in_every_respect(monkeypatch):
    items = varied()
    forked, _ = run(shift_with_rng, items, 2, 3, "fork", monkeypatch)
    spawned, _ = run(shift_with_rng, items, 2, 3, "spawn", monkeypatch)
    assert_same_outputs(spawned, forked)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_failed_chunk_is_rerun_from_the_original_inputs_even_in_the_worker_that_changed_them(
        monkeypatch, workers, start):
    items = [structure(i) for i in range(9)]
    before = round_trip(items)
    serial, serial_failures = run(shift_then_fail, items, 0, 3, errors="skip")
    outputs, failures = run(shift_then_fail, items, workers, 3, start, monkeypatch, errors="skip")
    assert [f.index for f in failures] == [f.index for f in serial_failures] == [4]
    assert_same_outputs(serial, outputs, strictly=False)
    # one worker: the items of the failed chunk were rerun in the very process that changed them
    assert [a.info["times_shifted"] for a in outputs] == [1] * 8
    assert [a.info["label"] for a in outputs] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert np.allclose([a.positions[0, 2] for a in outputs], [0.1 * i + 1.0 for i in (0, 1, 2, 3, 5, 6, 7, 8)])
    assert same_objects(before, round_trip(items))


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_worker_killed_mid_chunk_is_replaced_and_its_items_start_from_the_original_inputs(
        monkeypatch, tmp_path, start):
    items = [structure(i) for i in range(9)]
    before = round_trip(items)
    died_already = tmp_path / "serial"
    died_already.touch()        # the serial run must not end this process
    serial, _ = run(shift_then_die_once, items, 0, 3, op_kwargs={"marker": str(died_already)})
    marker = tmp_path / "died"
    outputs, failures = run(shift_then_die_once, items, 2, 3, start, monkeypatch, op_kwargs={"marker": str(marker)})
    assert marker.exists() and failures == []
    assert [a.info["times_shifted"] for a in outputs] == [1] * 9
    assert_same_outputs(serial, outputs, strictly=False)
    assert same_objects(before, round_trip(items))


def test_retired_and_replacement_workers_inherit_the_unchanged_inputs(monkeypatch):
    items = [structure(i) for i in range(20)]
    before = round_trip(items)
    serial, _ = run(shift_then_fail, items, 0, 2, op_kwargs={"bad": -1})
    # a fresh worker every two items: most chunks run in a worker forked after others changed their copies
    outputs, failures = run(shift_then_fail, items, 2, 2, "fork", monkeypatch, op_kwargs={"bad": -1},
                               max_items_per_worker=2)
    assert failures == []
    assert len({a.info["pid"] for a in outputs}) >= 5
    assert_same_outputs(serial, outputs, strictly=False)
    assert same_objects(before, round_trip(items))


@pytest.mark.parametrize("chunk", [1, 2])
def test_a_configset_holding_one_structure_twice_stores_each_output_at_its_own_location(monkeypatch, chunk):
    shared = structure(1)
    inputs = ConfigSet([[structure(0), shared], [shared], [structure(2)]])
    serial, _ = run(shift_then_fail, inputs, 0, chunk, op_kwargs={"bad": -1})
    forked, _ = run(shift_then_fail, inputs, 2, chunk, "fork", monkeypatch, op_kwargs={"bad": -1})
    assert [a.info["_ConfigSet_loc"] for a in forked] == [a.info["_ConfigSet_loc"] for a in serial]
    assert_same_outputs(serial, forked, strictly=False)


def test_a_configset_in_memory_gives_the_outputs_and_locations_of_a_serial_run(monkeypatch):
    nested = [[structure(0), structure(1)], [structure(2)], [structure(3), structure(4), structure(5)]]
    results = {}
    for workers, start in ((0, None), (2, "fork"), (2, "spawn")):
        inputs = ConfigSet(round_trip(nested))
        results[workers, start] = run(shift_then_fail, inputs, workers, 2, start, monkeypatch, op_kwargs={"bad": -1})[0]
    assert [a.info["_ConfigSet_loc"] for a in results[0, None]] == [
        " / 0 / 0", " / 0 / 1", " / 1 / 0", " / 2 / 0", " / 2 / 1", " / 2 / 2"]
    for key in ((2, "fork"), (2, "spawn")):
        assert_same_outputs(results[0, None], results[key], strictly=False)
    assert_same_outputs(results[2, "spawn"], results[2, "fork"])


class Counted:
    """An input whose pickling, in this process, is counted: the driver pickles no input it
    sends as a place in the inherited list."""

    pickled = 0

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        type(self).pickled += 1
        return Counted, (self.value,)


def atoms_of(items):
    return [Atoms("H", positions=[[0.0, 0.0, float(item.value)]]) for item in items]


@pytest.mark.parametrize("start, wait, pickled_here", [("fork", True, False), ("spawn", True, True),
                                                       ("fork", False, True)])
def test_only_a_forked_pool_of_a_waited_call_takes_the_inputs_from_its_inherited_list(
        monkeypatch, start, wait, pickled_here):
    items = [Counted(i) for i in range(6)]
    Counted.pickled = 0
    monkeypatch.setenv(START_ENV, start)
    result = autoparallelize(atoms_of, items, OutputSpec(), autopara_info={
        "num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 2, "wait": wait})
    if not wait:
        result = result.result(timeout=120)
    assert [a.positions[0, 2] for a in result] == [float(i) for i in range(6)]
    assert (Counted.pickled > 0) == pickled_here


def test_inputs_from_an_iterator_are_sent_as_items(monkeypatch):
    Counted.pickled = 0
    monkeypatch.setenv(START_ENV, "fork")
    result = autoparallelize(atoms_of, (Counted(i) for i in range(6)), OutputSpec(), autopara_info={
        "num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 2})
    assert [a.positions[0, 2] for a in result] == [float(i) for i in range(6)]
    assert Counted.pickled > 0


# --- lent items ------------------------------------------------------------------------


def append_to_history(items):
    """Changes its inputs in place: a list in their info, their positions, a counter."""
    for atoms in items:
        atoms.info.setdefault("history", []).append(atoms.info["label"])
        atoms.info["count"] = atoms.info.get("count", 0) + 1
        atoms.positions += 1.0
    return items


def with_shared_parts(twice):
    """Structures of which pairs share one part: a list in info, a dict of info, an array,
    a tuple holding a list; and, if ``twice``, one structure given twice."""
    items = [structure(i) for i in range(10)]
    shared_list = [-1]
    items[0].info["history"] = shared_list
    items[6].info["history"] = shared_list
    items[1].info["nested"] = items[7].info["nested"] = {"a": [1, 2]}
    positions = items[2].arrays["positions"]
    items[8].arrays["seen"] = items[2].arrays["seen"] = np.zeros(2)
    items[3].info["pair"] = items[9].info["pair"] = ([5],)
    return items + [items[4]] * twice, positions


@pytest.mark.parametrize("twice", [False, True])
@pytest.mark.parametrize("chunk", [1, 2])
def test_parts_that_structures_of_other_chunks_share_are_copied_for_each_as_in_a_serial_run(
        monkeypatch, chunk, twice):
    # one worker: every chunk runs in the process whose inherited items the op changed before
    items, _ = with_shared_parts(twice)
    before = round_trip(items)
    serial, _ = run(append_to_history, items, 0, chunk)
    forked, _ = run(append_to_history, items, 1, chunk, "fork", monkeypatch)
    assert_same_outputs(serial, forked, strictly=False)
    assert [a.info["count"] for a in forked] == [1] * len(items)
    assert forked[6].info["history"] == [-1, 6]
    assert np.allclose([a.positions[0, 2] for a in forked], [a.positions[0, 2] + 1.0 for a in before])
    assert same_objects(before, round_trip(items))


def test_items_without_shared_parts_are_lent_and_give_the_outputs_of_spawned_workers(monkeypatch):
    items = varied()[:-1]            # no structure twice: the plain ones are lent
    forked, _ = run(shift_with_rng, items, 2, 3, "fork", monkeypatch)
    spawned, _ = run(shift_with_rng, items, 2, 3, "spawn", monkeypatch)
    assert_same_outputs(spawned, forked)
    again, _ = run(append_to_history, items, 1, 2, "fork", monkeypatch)
    assert [a.info["count"] for a in again] == [1] * len(items)


def test_a_part_the_caller_holds_is_not_lent(monkeypatch):
    items = [structure(i) for i in range(6)]
    kept = items[4].arrays["positions"]        # the caller holds it: the worker's copy of it is not lent
    serial, _ = run(append_to_history, items, 0, 1)
    forked, _ = run(append_to_history, items, 1, 1, "fork", monkeypatch)
    assert_same_outputs(serial, forked, strictly=False)
    assert np.allclose(kept, structure(4).positions)


# the caller's input list, as a script that keeps it in a module global holds it
ALL_INPUTS = []


def shift_and_read_the_first_input(items, everything=None):
    """Changes its inputs in place; records the height of the first of ``everything`` (the
    whole input list, given as an argument or read from a module global) as it sees it."""
    everything = ALL_INPUTS if everything is None else everything
    for atoms in items:
        atoms.positions += 1.0
        atoms.info["first_z"] = float(everything[0].positions[0, 2])
        atoms.info["seen_as"] = id(atoms)
    return items


def test_inputs_whose_list_the_operation_gets_as_an_argument_are_not_lent(monkeypatch):
    items = [structure(i) for i in range(5)]
    serial, _ = run(shift_and_read_the_first_input, items, 0, 1, op_kwargs={"everything": items})
    forked, _ = run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch,
                    op_kwargs={"everything": items})
    assert [a.info["first_z"] for a in serial] == [0.0] * 5
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_whose_list_a_module_global_holds_are_not_lent(monkeypatch):
    items = [structure(i) for i in range(5)]
    monkeypatch.setitem(globals(), "ALL_INPUTS", items)        # as `ALL_INPUTS = items` in a script
    forked, _ = run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_that_only_the_callers_variables_hold_are_lent(monkeypatch):
    items = [structure(i) for i in range(5)]
    forked, _ = run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch,
                    op_kwargs={"everything": [structure(0)]})
    # a lent structure is the worker's inherited object itself, at the driver's address
    assert [a.info["seen_as"] for a in forked] == [id(a) for a in items]
    assert [a.positions[0, 2] for a in items] == [0.1 * i for i in range(5)]


def wrapped_shift(*args, **kwargs):
    """An operation's wrapper, as wfl writes them: everything goes on by ``*`` and ``**``."""
    return autoparallelize(shift_and_read_the_first_input, *args, **kwargs)


def test_inputs_passed_on_by_keyword_through_a_wrapper_are_still_lent(monkeypatch):
    items = [structure(i) for i in range(5)]
    monkeypatch.setenv(START_ENV, "fork")
    forked = list(wrapped_shift(inputs=items, outputs=OutputSpec(), everything=[structure(0)],
                                autopara_info={"num_python_subprocesses": 1, "num_inputs_per_python_subprocess": 1}))
    assert [a.info["seen_as"] for a in forked] == [id(a) for a in items]
    assert [a.info["first_z"] for a in forked] == [0.0] * 5


def test_inputs_of_a_list_that_a_lambda_captures_are_lent(monkeypatch):
    # a harness that keeps its runs as lambdas: the list lives in a cell of the lambdas'
    # closures, which nothing but this function's variables holds
    items = [structure(i) for i in range(5)]
    runs = {"forked": lambda: run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch,
                                  op_kwargs={"everything": [structure(0)]})}
    forked, _ = runs["forked"]()
    assert [a.info["seen_as"] for a in forked] == [id(a) for a in items]
    assert [a.positions[0, 2] for a in items] == [0.1 * i for i in range(5)]


def test_inputs_of_a_list_that_lambdas_run_from_a_loop_over_a_dict_capture_are_lent(monkeypatch):
    # a benchmark's harness: its runs kept as lambdas in a dict, run by a loop over the dict's
    # items, whose iterator (on this call's stack) holds the last pair it gave
    items = [structure(i) for i in range(5)]
    runs = {"forked": lambda: run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch,
                                  op_kwargs={"everything": [structure(0)]}),
            "again": lambda: None}
    results = {}
    for name, one_run in runs.items():
        results[name] = one_run()
    forked, _ = results["forked"]
    assert [a.info["seen_as"] for a in forked] == [id(a) for a in items]
    assert [a.positions[0, 2] for a in items] == [0.1 * i for i in range(5)]


# an iterator a script keeps, over getters of the input list (see the test below)
GETTERS_LEFT = None


def shift_and_read_the_first_input_through_the_iterator(items):
    return shift_and_read_the_first_input(items, next(GETTERS_LEFT)())


def test_inputs_of_a_list_that_an_iterator_in_a_module_global_reaches_are_not_lent(monkeypatch):
    items = [structure(i) for i in range(5)]
    getters = {i: (lambda: items) for i in range(10)}
    monkeypatch.setitem(globals(), "GETTERS_LEFT", iter(getters.values()))
    forked, _ = run(shift_and_read_the_first_input_through_the_iterator, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


# what the operation reads the caller's list through, in the tests below
READ_THE_LIST = []


def shift_and_read_the_first_input_as_told(items):
    return shift_and_read_the_first_input(items, READ_THE_LIST[0]())


def test_inputs_of_a_list_that_a_weakly_registered_callback_reaches_are_not_lent(monkeypatch):
    # weak references are no referrers to the collector: an observer registry of callbacks
    items = [structure(i) for i in range(5)]
    cursor = iter(items)

    def progress():
        return cursor

    callbacks = weakref.WeakSet([progress])
    monkeypatch.setattr(sys.modules[__name__], "READ_THE_LIST",
                        [lambda: next(iter(callbacks))().__reduce__()[1][0]])
    forked, _ = run(shift_and_read_the_first_input_as_told, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_of_a_list_that_a_signal_handler_reaches_are_not_lent(monkeypatch):
    # the interpreter keeps signal handlers outside the collector's view
    items = [structure(i) for i in range(5)]
    cursor = iter(items)
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: cursor)
    try:
        monkeypatch.setattr(sys.modules[__name__], "READ_THE_LIST",
                            [lambda: signal.getsignal(signal.SIGUSR1)(None, None).__reduce__()[1][0]])
        forked, _ = run(shift_and_read_the_first_input_as_told, items, 1, 1, "fork", monkeypatch)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_of_a_list_that_an_iterator_an_object_holds_reaches_are_not_lent(monkeypatch):
    # refused for the object that holds the iterator, well within the rings followed
    items = [structure(i) for i in range(5)]
    holder = types.SimpleNamespace(lists=iter((items,) * 10))
    monkeypatch.setattr(sys.modules[__name__], "READ_THE_LIST", [lambda: next(holder.lists)])
    monkeypatch.setattr(isolation, "_HOLDER_DEPTH", 20)
    forked, _ = run(shift_and_read_the_first_input_as_told, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_of_a_list_that_the_operation_captures_are_not_lent(monkeypatch):
    items = [structure(i) for i in range(5)]

    def shift_and_read_the_captured_first_input(chunk):
        return shift_and_read_the_first_input(chunk, items)

    forked, _ = run(shift_and_read_the_captured_first_input, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_of_a_list_that_a_function_given_to_the_operation_captures_are_not_lent(monkeypatch):
    items = [structure(i) for i in range(5)]

    def first_input():
        return items[0]

    def shift_and_read_through(chunk, source):
        return shift_and_read_the_first_input(chunk, [source()])

    forked, _ = run(shift_and_read_through, items, 1, 1, "fork", monkeypatch, op_kwargs={"source": first_input})
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def inputs_whose_frame_a_stored_exception_keeps():
    """A list built in a call that has returned, whose frame a traceback kept (an exception
    saved for a report): the operation reads the first input through it."""
    items = [structure(i) for i in range(5)]
    try:
        raise ValueError("logged, not raised")
    except ValueError as error:
        STORED_ERRORS.append(error)
    return items


STORED_ERRORS = []


def shift_and_read_the_first_input_of_the_stored_frame(items):
    frame = STORED_ERRORS[-1].__traceback__.tb_frame
    return shift_and_read_the_first_input(items, frame.f_locals["items"])


def test_inputs_of_a_list_that_a_finished_call_s_kept_frame_holds_are_not_lent(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "STORED_ERRORS", [])
    items = inputs_whose_frame_a_stored_exception_keeps()
    forked, _ = run(shift_and_read_the_first_input_of_the_stored_frame, items, 1, 1, "fork", monkeypatch)
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"


def test_inputs_are_not_lent_while_the_collector_has_frozen_objects(monkeypatch):
    # frozen objects are passed over by the collector's searches: a module global made
    # before the freeze (here, the one the operation reads) would hide the list
    gc.freeze()
    try:
        items = [structure(i) for i in range(5)]
        monkeypatch.setitem(globals(), "ALL_INPUTS", items)
        forked, _ = run(shift_and_read_the_first_input, items, 1, 1, "fork", monkeypatch)
    finally:
        gc.unfreeze()
    assert [a.info["first_z"] for a in forked] == [0.0] * 5, "a later chunk saw item 0 as lent and changed"
