"""``Atoms`` made and copied part by part: the one module that relies on their inner attributes.

``Atoms.__init__`` checks and converts every argument, and a ``SinglePointCalculator``
copies its structure through it again: about 100 us for a small structure, more than
parsing it takes.  Where the parts are already of the types the constructor would make,
this module builds the same objects directly:

- :func:`is_plain_atoms` tells whether an ``Atoms`` is made only of such parts;
- :func:`atoms_from_parts` builds one from parts the caller hands over;
- :func:`copy_as_ase` is ``Atoms.copy`` for a plain ``Atoms``;
- :class:`ResultsCalculator` attaches a ``SinglePointCalculator`` made like one of ASE's
  own, from a template that ASE built;
- :func:`same_objects` compares two object graphs, types, values and sharing included, so
  that a caller can check a fast path against ASE's own construction before trusting it.

Nothing here guesses what a future ASE might add: an ``Atoms`` or calculator with other
attributes than those listed is not plain, and the callers take ASE's way for it.
"""

import types

import numpy as np
from ase import Atoms
from ase.cell import Cell

# The attributes of a plain Atoms: one with others was made by code that may rely on them.
ATOMS_ATTRIBUTES = frozenset({"_cellobj", "_pbc", "arrays", "_celldisp", "_constraints", "info", "_calc"})
_N_ATOMS_ATTRIBUTES = len(ATOMS_ATTRIBUTES)
# looked up once: is_plain_atoms names it four times for every structure
_ARRAY = np.ndarray
_FLOAT, _BOOL = np.dtype(np.float64), np.dtype(np.bool_)
# bound once: it is called for every structure a worker sends back
_new = object.__new__
# values a copy may share: no operation can change them in place
IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), np.generic)


def is_plain_atoms(item) -> bool:
    """Whether ``item`` is an ``Atoms`` of plain parts.

    Plain: no calculator, no constraints, no subclass, no attribute of its own, and arrays
    that are ordinary C-ordered numpy arrays of numbers or strings (its ``info`` is not
    looked at).
    """
    # written out flat, with no tuple made (a shape is a new tuple each time it is read): it
    # is asked of every item of every chunk, twice in a worker
    if type(item) is not Atoms:
        return False
    state = item.__dict__
    # the seven attributes, none other: as many, and each one there
    if len(state) != _N_ATOMS_ATTRIBUTES or "info" not in state:
        return False
    try:
        if state["_calc"] is not None or state["_constraints"]:
            return False
        cell, pbc, displacement, arrays = state["_cellobj"], state["_pbc"], state["_celldisp"], state["arrays"]
    except KeyError:
        return False
    if type(cell) is not Cell:
        return False
    cell_state = cell.__dict__
    if len(cell_state) != 1 or "array" not in cell_state:
        return False
    cell = cell_state["array"]
    # shapes (3, 3), (3,) and (3, 1), told by ndim, len and size
    if (type(cell) is not _ARRAY or cell.dtype != _FLOAT or cell.ndim != 2 or len(cell) != 3 or cell.size != 9
            or type(pbc) is not _ARRAY or pbc.dtype != _BOOL or pbc.ndim != 1 or len(pbc) != 3
            or type(displacement) is not _ARRAY or displacement.dtype != _FLOAT or displacement.ndim != 2
            or len(displacement) != 3 or displacement.size != 3):
        return False
    for array in arrays.values():
        if type(array) is not _ARRAY or array.dtype.hasobject or not array.flags.c_contiguous:
            return False
    return True


def atoms_from_parts(cell, pbc, arrays, info, celldisp=None) -> Atoms:
    """A plain ``Atoms`` holding the given parts themselves (no copies are made).

    Parameters
    ----------
    cell : numpy.ndarray
        A C-ordered float64 array of shape (3, 3), the cell vectors as rows.
    pbc : numpy.ndarray
        A bool array of shape (3,).
    arrays : dict of str to numpy.ndarray
        The per-atom arrays, ``numbers`` and ``positions`` first as ASE keeps them.
    info : dict
    celldisp : numpy.ndarray, optional
        A float64 array of shape (3, 1); zeros by default.

    The caller hands the parts over: nothing else may hold them afterwards.
    """
    # built as unpickling builds them, without __init__: half the time of filling each one in
    cell_object = _new(Cell)
    cell_object.array = cell
    atoms = _new(Atoms)
    atoms.__dict__ = {"_cellobj": cell_object, "_pbc": pbc, "arrays": arrays,
                      "_celldisp": np.zeros((3, 1)) if celldisp is None else celldisp,
                      "_constraints": [], "info": info, "_calc": None}
    return atoms


def copy_as_ase(atoms) -> Atoms:
    """What ``atoms.copy()`` gives for a plain ``atoms``: arrays copied, ``info`` copied shallowly."""
    state = atoms.__dict__
    return atoms_from_parts(state["_cellobj"].array.copy(), state["_pbc"].copy(),
                            {name: value.copy() for name, value in state["arrays"].items()},
                            dict(state["info"]), state["_celldisp"].copy())


class ResultsCalculator:
    """Attaches calculators made like ``template``, a ``SinglePointCalculator`` that ASE made.

    A new calculator gets the template's attributes, except its own ``results``, its own
    copy of the structure, fresh empty containers where the template holds empty ones,
    and methods bound to itself where the template holds its own bound methods.  Use
    :meth:`usable` before trusting a template.

    Parameters
    ----------
    template : ase.calculators.singlepoint.SinglePointCalculator
    """

    def __init__(self, template):
        self.kind = type(template)
        # (name, how) in the template's order: ("share", value), ("fresh", type), ("bind", function), ("own", None)
        self.parts = []
        self.usable = True
        for name, value in vars(template).items():
            if name in ("results", "atoms"):
                self.parts.append((name, "own", None))
            elif isinstance(value, types.MethodType) and value.__self__ is template:
                self.parts.append((name, "bind", value.__func__))
            elif isinstance(value, IMMUTABLE):
                self.parts.append((name, "share", value))
            elif type(value) in (dict, list) or isinstance(value, dict) and type(value).__init__ is dict.__init__:
                if value:
                    self.usable = False     # a filled container of the calculator's own
                self.parts.append((name, "fresh", type(value)))
            else:
                self.usable = False

    def attach(self, atoms, results):
        """Give ``atoms`` (plain) a calculator holding ``results`` (taken over, not copied)."""
        calc = self.kind.__new__(self.kind)
        own = {"results": results, "atoms": copy_as_ase(atoms)}
        state = calc.__dict__
        for name, how, value in self.parts:
            if how == "share":
                state[name] = value
            elif how == "fresh":
                state[name] = value()
            elif how == "bind":
                state[name] = types.MethodType(value, calc)
            else:
                state[name] = own[name]
        atoms.__dict__["_calc"] = calc
        return atoms


def same_objects(a, b) -> bool:
    """Whether the object graphs under ``a`` and ``b`` are alike in every respect a user could see.

    Types, attribute names and their order, dict keys and their order, array dtypes,
    shapes, memory layout and values (NaN equal to NaN) must agree, and so must sharing:
    where one graph holds the same object twice, the other must too, and no object may
    be part of both graphs.  Bound methods must be bound to the corresponding objects.
    Objects of other kinds than those (numbers, strings, containers, arrays, Atoms,
    Cells, calculators with a ``__dict__``) compare unequal, so that the answer is never
    a guess.
    """
    return _Comparison().same(a, b)


class _Comparison:
    def __init__(self):
        self.pairs = {}         # id in a -> id in b, for the mutable objects met so far
        self.paired = set()     # the ids in b of those
        self.keep = []          # holds the objects, so that their ids stay theirs

    def same(self, a, b):
        if type(a) is not type(b):
            return False
        if isinstance(a, IMMUTABLE):
            return a == b or (a != a and b != b)
        known = self.pairs.get(id(a))
        if known is not None:
            # met before (or being compared further up): its correspondence is all there is to check
            return known == id(b)
        if not self._pair(a, b):
            return False
        if isinstance(a, np.ndarray):
            return self._same_arrays(a, b)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(self.same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            if list(a) != list(b):
                return False
            return all(self.same(a[key], b[key]) for key in a) and self._same_state(a, b)
        if isinstance(a, types.MethodType):
            return a.__func__ is b.__func__ and self.same(a.__self__, b.__self__)
        if hasattr(a, "__dict__") and not isinstance(a, type):
            return self._same_state(a, b)
        return False

    def _pair(self, a, b):
        if id(b) in self.paired or a is b:
            return False
        self.pairs[id(a)] = id(b)
        self.paired.add(id(b))
        self.keep.append((a, b))
        return True

    def _same_state(self, a, b):
        state_a, state_b = getattr(a, "__dict__", {}), getattr(b, "__dict__", {})
        if list(state_a) != list(state_b):
            return False
        return all(self.same(state_a[name], state_b[name]) for name in state_a)

    def _same_arrays(self, a, b):
        if a.dtype != b.dtype or a.shape != b.shape or a.flags.c_contiguous != b.flags.c_contiguous \
                or a.flags.f_contiguous != b.flags.f_contiguous or a.flags.owndata != b.flags.owndata:
            return False
        if a.dtype.hasobject:
            return all(self.same(x, y) for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
