"""Copies of a chunk's inputs for a serial run, equal to what a worker would unpickle.

A serial run applies the operation in the calling process.  It must not change the
caller's objects (an operation may edit its inputs in place), and the items of a chunk
that failed are run again one by one from their original state: so each chunk is run on
a copy.  A pickle round trip gives that copy, as the chunk would travel to a worker, but
costs about 20 us per small structure (numpy rebuilds every array from a buffer).  A plain
``Atoms`` whose parts are all plain data (numbers, strings, arrays, lists and dicts of
them) is copied here part by part instead, in a third of the time; anything else (other
objects, calculators, constraints, object arrays, subclasses) still takes the pickle
round trip, so the result is always what a worker would have received.
"""

import copy
import gc
import pickle
import signal
import sys
import types
import weakref

import numpy as np

from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.structures import IMMUTABLE as _IMMUTABLE
from wfl_like.structures import atoms_from_parts, is_plain_atoms


class _NotPlain(Exception):
    """A part that only a pickle round trip copies faithfully."""


def isolated(items: list) -> list:
    """A copy of ``items`` that shares no mutable state with them (see the module's notes).

    Parameters
    ----------
    items : list
        A chunk's inputs.

    Returns
    -------
    list
        Equal items, with the identities a pickle round trip of the list keeps: an object
        that appears twice in ``items``, or that two of them share (a list in the ``info``
        of two structures), appears twice in the copy, as one object.
    """
    memo = {}
    copies = []
    for item in items:
        known = memo.get(id(item))
        if known is None:
            try:
                known = memo[id(item)] = _copy(item, memo)
            except _NotPlain:
                # an object only pickle copies faithfully, which the others may share: the
                # whole chunk goes through pickle at once, as it would to a worker
                return round_trip(list(items))
        copies.append(known)
    return copies


def held_by_the_inputs_alone(inputs: tuple, callers) -> bytes:
    """Which of ``inputs`` nothing holds but the inputs themselves: ``b"\\x01"`` or ``b"\\x00"`` each.

    Asked by the driver before it forks its workers: a structure that something else holds
    too (another structure's ``info``, an argument of the operation, a global, a second
    place among the inputs) is never lent (:func:`lendable`), since a change made to it in
    a worker would be seen there through that other holder.  No structure at all is lent
    where the list that holds them all, ``callers`` (the caller's list or tuple, which may
    be ``inputs`` itself), is held by anything but the variables of running functions
    (closures' captured ones, and the iterators of the loops those calls run, included):
    an argument of the operation, a module's global, an object's attribute, a function
    that one of these holds.  The operation could reach it there, and read one structure
    as another chunk left it.

    Holders are found through the garbage collector, so a holder it does not track is not
    seen: a numpy object array, a function registered with :mod:`atexit` (or another
    container of a C extension that the collector does not traverse) that holds the
    caller's list itself, or a tuple, dict, cell, function or iterator around it (not its
    structures, which are counted exactly).  Nor is an operation that reads the frames of
    running calls (``sys._getframe``, a frame object saved while its call runs) guarded
    against.  An operation that reaches the other inputs that way should be given them as a
    ConfigSet, whose chunks carry copies.  (Functions that weak references, signal handlers
    and profile or trace hooks reach, which the collector does not see either, are checked.)
    """
    if _held_beyond_variables(callers):
        return bytes(len(inputs))
    probe = object()
    # held like an input: by a tuple that is iterated, and by the caller's list if it is another
    others = [[probe]] if callers is not inputs else []
    expected = _counts((probe,))[0] - 1        # less the name `probe` itself
    del others
    return bytes(count == expected for count in _counts(inputs))


# How many rings of holders around the caller's list are followed before it counts as held:
# a variable that a lambda captures (a cell, in the lambda's closure tuple, held by the
# lambda, held by a dict of the caller's and by the last pair of a loop over its items) is
# four; the loop's iterator, which holds that pair, and the ring that finds nothing holding
# the iterator, two more.
_HOLDER_DEPTH = 6

# Holders looked through, to what holds them: the containers by which variables of running
# functions hold things (arguments passed on by * and **, variables that closures capture),
# and the iterators of the loops they run (``for name, run in runs.items()``), which live
# on a running call's stack as its variables do.  A holder of any other kind (an object, a
# module, a list, a class) is one the operation may reach; so is an iterator that one of
# those holds.
_LOOKED_THROUGH = (tuple, dict, types.CellType, types.FunctionType,
                   type(iter([])), type(iter(())), type(iter({})), type(iter({}.values())), type(iter({}.items())),
                   type(reversed([])), enumerate, zip)


def _held_beyond_variables(container):
    """Whether something but the variables of running functions holds ``container``.

    The collector finds every holder it tracks: dicts (a module's globals, an object's
    attributes, keyword arguments), lists, objects, closures' cells.  A variable of a
    running function is no object (or a frame, where one was made), but a call with ``*``
    or ``**`` holds its arguments in a tuple or dict that only the running call holds, and
    a variable a closure captures lives in a cell, in the closure's tuple, held by the
    function: so these are looked through, a few rings out, to what holds them.  One search
    of the heap per ring, for all of its holders at once.  A frame is a variable only while
    its call runs: one that outlived it (kept by a stored traceback) is a holder like any.
    """
    if gc.get_freeze_count():
        # the collector's searches pass over frozen objects: a holder among them is not seen
        return True
    # the lists made here hold what they list: not holders to report; and they are kept to
    # the end, so that no id in `mine` or `running` is reused by an object made meanwhile
    kept = []
    try:
        return _held_within_rings(container, kept)
    finally:
        # `kept` holds this call's own frame, which holds `kept`: a cycle that, left to the
        # collector (paused while a call runs), would keep `[container]` alive, a list that
        # holds the caller's list, which the next call's check would count as a holder
        kept.clear()


def _held_within_rings(container, kept):
    mine = set()
    running = _running_frames(kept)
    hooks = _interpreter_hooks(kept, mine)
    level = [container]
    for _ in range(_HOLDER_DEPTH):
        kept.append(level)
        mine.add(id(level))
        holders = gc.get_referrers(*level)
        kept.append(holders)
        mine.add(id(holders))
        seen = set(mine)
        found = []
        for holder in holders:
            if id(holder) not in seen and id(holder) not in running:
                seen.add(id(holder))
                found.append(holder)
        if not found:
            return False
        if any(_reachable(holder, hooks) for holder in found):
            return True
        level = found
    return True


def _reachable(holder, hooks):
    """Whether the operation may reach ``holder``: any kind not looked through, and a function
    held where the collector cannot see it, by a weak reference (a WeakSet of callbacks; of
    the kinds looked through, only functions take one) or by the interpreter's own state
    (``hooks``), which the operation can ask for."""
    if type(holder) not in _LOOKED_THROUGH:
        return True
    return type(holder) is types.FunctionType and (id(holder) in hooks or weakref.getweakrefcount(holder) > 0)


def _interpreter_hooks(kept, mine):
    """The ids of the callables the interpreter holds outside the collector's view: signal
    handlers, this thread's profile and trace functions, its async generator hooks."""
    hooks = [sys.getprofile(), sys.gettrace(), *sys.get_asyncgen_hooks()]
    for number in signal.valid_signals():
        try:
            hooks.append(signal.getsignal(number))
        except (OSError, ValueError):
            pass        # a number the platform lists but will not say a handler of
    hooks = [hook for hook in hooks if callable(hook)]
    kept.append(hooks)
    mine.add(id(hooks))         # a list made here: not a holder to report
    return {id(hook) for hook in hooks}


def _running_frames(kept):
    """The ids of the frames of every call running now, in any thread (the frames go in ``kept``)."""
    running = set()
    for frame in sys._current_frames().values():
        while frame is not None:
            kept.append(frame)
            running.add(id(frame))
            frame = frame.f_back
    return running


def _counts(items):
    return [sys.getrefcount(item) for item in items]


def lendable(items: list) -> bool:
    """Whether an operation may be given ``items`` themselves, in a process whose items they are.

    A forked worker's inherited inputs are its own: a change made there reaches neither the
    caller nor another worker.  But a part that two items share (one list in the ``info``
    of two structures) or that something else in the process holds would carry a change
    made while one chunk ran into a later chunk, where a copy would not.  So the items are
    lent only where each is a plain ``Atoms`` whose every mutable part (its dicts, lists,
    arrays and cell, to the bottom of its ``info``) is held by that item alone: a reference
    count of one, which no sharing can give.  An array that is a view of another does not
    qualify.  The caller makes sure that nothing else holds the items themselves
    (:func:`held_by_the_inputs_alone`).

    Parameters
    ----------
    items : list
        A chunk's inputs.

    Returns
    -------
    bool
    """
    global _counts_checked
    if _counts_checked is None:
        _counts_checked = _counts_as_expected()
    if not _counts_checked:
        return False
    for item in items:
        if not is_plain_atoms(item) or not _atoms_owns_its_parts(item):
            return False
    return True


# sys.getrefcount of a part reached as `holder[key]`, held once: its holder's and the call's
_HELD_ONCE = 2
# bound once: it is called a dozen times for every structure lent
_refs = sys.getrefcount
_counts_checked = None


def _counts_as_expected():
    """Whether this interpreter counts references as the checks below expect (an interpreter
    that counts borrowed references otherwise lends nothing)."""
    shared = [0]
    one, other = {"part": shared}, {"part": [0]}
    return _refs(one["part"]) == _HELD_ONCE + 1 and _refs(other["part"]) == _HELD_ONCE


def _atoms_owns_its_parts(atoms):
    state = atoms.__dict__
    # written out flat: it is asked of every item of every chunk that is lent
    if (_refs(atoms.__dict__) != _HELD_ONCE + 1         # the object's own, and `state`
            or _refs(state["arrays"]) != _HELD_ONCE or _refs(state["_cellobj"]) != _HELD_ONCE
            or _refs(state["_pbc"]) != _HELD_ONCE or _refs(state["_celldisp"]) != _HELD_ONCE
            or _refs(state["_constraints"]) != _HELD_ONCE or _refs(state["info"]) != _HELD_ONCE):
        return False
    cell = state["_cellobj"].__dict__
    if _refs(cell["array"]) != _HELD_ONCE or cell["array"].base is not None:
        return False
    if state["_pbc"].base is not None or state["_celldisp"].base is not None:
        return False
    arrays = state["arrays"]
    for name in arrays:
        if _refs(arrays[name]) != _HELD_ONCE or arrays[name].base is not None:
            return False
    return _owns_its_parts(state["info"])


def _owns_its_parts(container):
    """Whether every mutable value in a dict, list or tuple is held by it alone, all the way down."""
    if type(container) is dict:
        for key in container:
            if type(key) not in _IMMUTABLE:
                return False
        keys = container
    else:
        keys = range(len(container))
    for key in keys:
        kind = type(container[key])
        if kind in _IMMUTABLE or isinstance(container[key], np.generic):
            continue
        if kind is tuple and _all_immutable(container[key]):
            continue            # a tuple of immutable values may be shared: nothing in it can change
        if _refs(container[key]) != _HELD_ONCE:
            return False
        if kind is dict or kind is list or kind is tuple:
            if not _owns_its_parts(container[key]):
                return False
        elif kind is np.ndarray:
            if container[key].base is not None or container[key].dtype.hasobject:
                return False
        else:
            return False
    return True


def _all_immutable(values):
    return all(type(value) in _IMMUTABLE or isinstance(value, np.generic)
               or type(value) is tuple and _all_immutable(value) for value in values)


def round_trip(obj):
    """``obj`` through pickle, as it would reach a worker."""
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _copy(item, memo):
    if type(item) is FrameItem:
        return item         # frozen, of immutable parts: the worker side parses its own structures from it
    if not is_plain_atoms(item):
        raise _NotPlain
    return _copy_atoms(item, memo)


def _copy_atoms(atoms, memo):
    state = atoms.__dict__
    info = _copy_plain(state["info"], memo)
    return atoms_from_parts(state["_cellobj"].array.copy(), state["_pbc"].copy(),
                            {name: value.copy() for name, value in state["arrays"].items()}, info,
                            state["_celldisp"].copy())


def _copy_array(array):
    if type(array) is not np.ndarray or array.dtype.hasobject:
        raise _NotPlain
    return array.copy()


def _copy_plain(value, memo):
    """A deep copy of plain data, each mutable part copied once (``memo``: id -> copy); _NotPlain
    for anything else."""
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, np.generic):
        return value
    known = memo.get(id(value))
    if known is not None:
        return known
    if kind is dict:
        copied = {_key(key): _copy_plain(item, memo) for key, item in value.items()}
    elif kind is list:
        copied = [_copy_plain(item, memo) for item in value]
    elif kind is tuple:
        copied = tuple(_copy_plain(item, memo) for item in value)
    elif kind is np.ndarray:
        copied = _copy_array(value)
    else:
        raise _NotPlain
    memo[id(value)] = copied
    return copied


def _key(key):
    if type(key) not in _IMMUTABLE:
        raise _NotPlain
    return key


def copy_rngs(rngs: list) -> list:
    """Copies of per-item generators (None stays None): the original streams stay where they were."""
    if all(rng is None for rng in rngs):
        return list(rngs)
    return [None if rng is None else copy.deepcopy(rng) for rng in rngs]
