"""Chunks of plain ``Atoms`` pickled as a few arrays, for the trip to a worker and back.

Pickle rebuilds every numpy array of every structure on its own (five per ``Atoms``),
which costs the driver more than the trip itself for small structures.  A chunk's plain
structures (see :mod:`~wfl_like.autoparallelize.workers.isolation`) are sent instead as
one array per name (positions of all its structures end to end, and so on) and cut apart
on arrival into arrays of their own: the receiver gets a list equal to what pickling the
list gives, with each array a C-ordered copy.  ``None`` and anything not plain travel in
the same message, pickled as usual.
"""

import numpy as np

from wfl_like.structures import atoms_from_parts, is_plain_atoms

# Marks, in place of an atom count, the entries that are not plain structures.
_NONE = -1
_OTHER = -2


class PackedList:
    """A list pickled with its plain ``Atoms`` packed; unpickles as a plain ``list``.

    Made by :func:`packed`; never seen by the operation or the supervisor, unless a
    list is handed over in the same process (then :func:`unpacked` gives it back).
    """

    __slots__ = ("items", "names", "plain")

    def __init__(self, items, names, plain):
        self.items, self.names, self.plain = items, names, plain

    def __reduce__(self):
        return _unpack, _pack(self.items, self.names, self.plain)


def packed(items):
    """``items`` as a :class:`PackedList` where that pays, else ``items`` itself.

    It pays where at least two entries are plain ``Atoms`` with the arrays (names, order,
    types, trailing shapes) of the first plain one; the others travel pickled as usual.  An
    object that appears twice keeps the list as it is, so that the receiver gets one object
    twice, as pickle gives it.
    """
    if not isinstance(items, list) or len(items) < 2:
        return items
    names, plain, seen = None, [], set()
    for item in items:
        if item is None:
            plain.append(False)
            continue
        if id(item) in seen:
            return items
        seen.add(id(item))
        if not is_plain_atoms(item):
            plain.append(False)
            continue
        if names is None:
            names = _layout(item)
        # one of other arrays than the first plain one travels pickled as usual
        plain.append(names is not _UNCUT and _fits(item.arrays, names))
    if sum(plain) < 2:
        return items
    return PackedList(items, names, plain)


# The layout of a structure with no arrays or a zero-dimensional one, which cannot be cut
# apart by atom (arrays of different lengths, which ASE does not make but an assignment to
# ``atoms.arrays`` can, are told by _fits, structure by structure).
_UNCUT = object()


def _layout(atoms):
    """Name, dtype, number of dimensions and trailing shape of each array, in order (or _UNCUT)."""
    if not atoms.arrays or any(value.ndim == 0 for value in atoms.arrays.values()):
        return _UNCUT
    return tuple((name, value.dtype, value.ndim, value.shape[1:]) for name, value in atoms.arrays.items())


def _fits(arrays, names):
    if len(arrays) != len(names):
        return False
    length = None
    for (name, value), (wanted, dtype, ndim, trailing) in zip(arrays.items(), names):
        # a shape is a new tuple each time it is read: one-dimensional arrays never need it
        if (name != wanted or value.dtype != dtype or value.ndim != ndim
                or (ndim > 1 and value.shape[1:] != trailing)):
            return False
        # every array one row per atom, as many as the first has (ndim >= 1, as the layout's)
        if length is None:
            length = len(value)
        elif len(value) != length:
            return False
    return True


def unpacked(items):
    """The list behind a :class:`PackedList` that was not pickled; anything else as it is."""
    return items.items if isinstance(items, PackedList) else items


def _pack(items, names, plain):
    counts, others, structures = [], [], []
    for item, is_plain in zip(items, plain):
        if item is None:
            counts.append(_NONE)
        elif is_plain:
            counts.append(len(item.arrays[names[0][0]]))
            structures.append(item)
        else:
            counts.append(_OTHER)
            others.append(item)
    states = [s.__dict__ for s in structures]
    arrays = tuple(np.concatenate([state["arrays"][name] for state in states]) for name, _, _, _ in names)
    # joined end to end and shaped after: np.stack costs more than all the rest
    cells = np.concatenate([state["_cellobj"].array for state in states]).reshape(-1, 3, 3)
    pbcs = np.concatenate([state["_pbc"] for state in states]).reshape(-1, 3)
    displacements = np.concatenate([state["_celldisp"] for state in states]).reshape(-1, 3, 1)
    infos = [state["info"] for state in states]
    return (np.array(counts, dtype=np.int64), tuple(name for name, _, _, _ in names), arrays, cells, pbcs,
            displacements, infos, others)


def _unpack(counts, names, arrays, cells, pbcs, displacements, infos, others):
    sizes = counts[counts >= 0]
    # each structure's arrays, cut name by name: one loop per name costs less than one
    # dictionary built per structure from slices
    if len(sizes) and (sizes == sizes[0]).all():
        shape = (len(sizes), int(sizes[0]))
        columns = [[part.copy() for part in array.reshape(shape + array.shape[1:])] for array in arrays]
    else:
        ends = np.cumsum(sizes).tolist()
        bounds = list(zip([0] + ends[:-1], ends))
        columns = [[array[start:end].copy() for start, end in bounds] for array in arrays]
    per_structure = zip(zip(*columns), [cell.copy() for cell in cells], [pbc.copy() for pbc in pbcs],
                        [displacement.copy() for displacement in displacements], infos)
    items, others = [], iter(others)
    for count in counts.tolist():
        if count == _NONE:
            items.append(None)
        elif count == _OTHER:
            items.append(next(others))
        else:
            parts, cell, pbc, displacement, info = next(per_structure)
            items.append(atoms_from_parts(cell, pbc, dict(zip(names, parts)), info, displacement))
    return items
