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
import pickle

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
