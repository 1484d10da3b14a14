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
from ase import Atoms
from ase.cell import Cell

from wfl_like.autoparallelize.frame_items import FrameItem

# The attributes of a plain Atoms: one with others was made by code that may rely on them.
_ATOMS_ATTRIBUTES = frozenset({"_cellobj", "_pbc", "arrays", "_celldisp", "_constraints", "info", "_calc"})
_CELL_ATTRIBUTES = frozenset({"array"})
_FLOAT, _BOOL = np.dtype(np.float64), np.dtype(np.bool_)
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), np.generic)


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
        that appears twice in ``items`` appears twice in the copy, as one object.
    """
    memo = {}
    copies = []
    for item in items:
        known = memo.get(id(item))
        if known is None:
            known = memo[id(item)] = _copy(item)
        copies.append(known)
    return copies


def round_trip(obj):
    """``obj`` through pickle, as it would reach a worker."""
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def plain_atoms(item) -> bool:
    """Whether ``item`` is an ``Atoms`` of plain parts: no calculator, no constraints, no subclass,
    no attribute of its own, and arrays that are ordinary C-ordered numpy arrays of numbers or strings
    (its ``info`` is not looked at)."""
    # written out flat: it is asked of every item of every chunk
    if type(item) is not Atoms:
        return False
    state = item.__dict__
    if state.keys() != _ATOMS_ATTRIBUTES or state["_calc"] is not None or state["_constraints"]:
        return False
    cell, pbc, displacement = state["_cellobj"], state["_pbc"], state["_celldisp"]
    if type(cell) is not Cell or cell.__dict__.keys() != _CELL_ATTRIBUTES:
        return False
    cell = cell.array
    if (type(cell) is not np.ndarray or cell.dtype != _FLOAT or cell.shape != (3, 3)
            or type(pbc) is not np.ndarray or pbc.dtype != _BOOL or pbc.shape != (3,)
            or type(displacement) is not np.ndarray or displacement.dtype != _FLOAT or displacement.shape != (3, 1)):
        return False
    for array in state["arrays"].values():
        if type(array) is not np.ndarray or array.dtype.hasobject or not array.flags.c_contiguous:
            return False
    return True


def _copy(item):
    if type(item) is FrameItem:
        return item         # frozen, of immutable parts: the worker side parses its own structures from it
    if plain_atoms(item):
        try:
            return _copy_atoms(item)
        except _NotPlain:
            pass        # its info holds something else than plain data
    return round_trip(item)


def _copy_atoms(atoms):
    state = atoms.__dict__
    info = _copy_plain(state["info"])
    new = Atoms.__new__(Atoms)
    new.__dict__.update(
        _cellobj=Cell(state["_cellobj"].array.copy()),
        _pbc=state["_pbc"].copy(),
        arrays={name: value.copy() for name, value in state["arrays"].items()},
        _celldisp=state["_celldisp"].copy(),
        _constraints=[],
        info=info,
        _calc=None,
    )
    return new


def _copy_array(array):
    if type(array) is not np.ndarray or array.dtype.hasobject:
        raise _NotPlain
    return array.copy()


def _copy_plain(value):
    """A deep copy of plain data; _NotPlain for anything else."""
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, np.generic):
        return value
    if kind is dict:
        return {_key(key): _copy_plain(item) for key, item in value.items()}
    if kind is list:
        return [_copy_plain(item) for item in value]
    if kind is tuple:
        return tuple(_copy_plain(item) for item in value)
    if kind is np.ndarray:
        return _copy_array(value)
    raise _NotPlain


def _key(key):
    if type(key) not in _IMMUTABLE:
        raise _NotPlain
    return key


def copy_rngs(rngs: list) -> list:
    """Copies of per-item generators (None stays None): the original streams stay where they were."""
    if all(rng is None for rng in rngs):
        return list(rngs)
    return [None if rng is None else copy.deepcopy(rng) for rng in rngs]
