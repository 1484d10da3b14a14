"""Locations of structures inside nested collections.

A location is a tuple of non-negative ints: ``(2, 0)`` is the first structure of the
third group.  wfl stores it in ``Atoms.info["_ConfigSet_loc"]`` as the string
``" / 2 / 0"``; that string form exists only at the boundary (``info`` and files),
everything inside works with tuples.
"""

from ase import Atoms

LOC_KEY = "_ConfigSet_loc"
_SEP = " / "


def format_location(loc):
    """``(2, 0)`` -> ``" / 2 / 0"``; ``()`` -> ``""``."""
    return "".join(f"{_SEP}{i}" for i in loc)


def parse_location(text):
    """``" / 2 / 0"`` -> ``(2, 0)``; ``""`` or ``None`` -> ``()``.

    Raises
    ------
    ValueError
        When the text is not in wfl's location form.
    """
    if not text:
        return ()
    if isinstance(text, tuple):
        return text
    parts = text.split(_SEP)
    try:
        if parts[0].strip() != "":
            raise ValueError
        return tuple(int(p) for p in parts[1:])
    except ValueError:
        raise ValueError(f"{LOC_KEY} value {text!r} is not a location of the form ' / 2 / 0'") from None


def location_of(atoms):
    """The location stored in an ``Atoms``'s info, as a tuple, or ``None``."""
    text = atoms.info.get(LOC_KEY)
    return None if text is None else parse_location(text)


class SparseList:
    """A list with holes: items by index, costing memory only for the items present.

    The trees built from locations (outputs kept in memory, groups read from a file)
    use it, so that a location such as ``" / 1000000000"`` costs one entry, not a
    billion placeholders.  Iteration yields the items present, in index order.
    """

    def __init__(self):
        self._items = {}
        self._end = 0         # one past the largest index: append() stays O(1)

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return (item for _, item in self.present())

    def present(self):
        """``(index, item)`` of the items present, in index order."""
        return sorted(self._items.items(), key=lambda pair: pair[0])

    def get(self, i):
        """The item at ``i``, or ``None`` for a hole."""
        return self._items.get(i)

    def __getitem__(self, i):
        # indexed like the list it stands for: a hole reads as None
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"SparseList indices must be integers, not {type(i).__name__}")
        if i < 0:
            i += self._end
        if not 0 <= i < self._end:
            raise IndexError("SparseList index out of range")
        return self._items.get(i)

    def set(self, i, value):
        self._items[i] = value
        self._end = max(self._end, i + 1)

    def append(self, value):
        """Put ``value`` after the last item."""
        self.set(self._end, value)

    def extend(self, values):
        """Put ``values`` after the last item, in order."""
        values = list(values)
        self._items.update(zip(range(self._end, self._end + len(values)), values))
        self._end += len(values)

    def __repr__(self):
        return f"SparseList({dict(self.present())!r})"


def present(node):
    """``(index, item)`` of the items of a tree node (a list or a SparseList), holes passed over."""
    if isinstance(node, SparseList):
        return node.present()
    return [(i, item) for i, item in enumerate(node) if item is not None]


def iter_tree(tree, prefix=()):
    """Yield ``(location, Atoms)`` for every ``Atoms`` in a nested list, depth first.

    ``None`` entries (and the holes of a :class:`SparseList`) are placeholders for
    missing items and are passed over, so the locations of the items after them stay
    what they were.
    """
    for i, item in present(tree):
        if isinstance(item, Atoms):
            yield prefix + (i,), item
        else:
            yield from iter_tree(item, prefix + (i,))


def place_in_tree(tree, loc, value):
    """Put ``value`` at ``loc`` in a tree of SparseLists (or lists), creating the nodes on the way.

    Raises
    ------
    ValueError
        ``loc`` is empty, already holds an item, or lies inside a stored structure.
    """
    if not loc:
        raise ValueError("cannot place an item at the empty location")
    node = tree
    for depth, i in enumerate(loc):
        current = _get(node, i)
        if depth == len(loc) - 1:
            if current is not None:
                raise ValueError(f"location {format_location(loc)!r} already holds a stored output; "
                                 f"each input's output is stored once")
            _set(node, i, value)
            return
        if current is None:
            current = SparseList()
            _set(node, i, current)
        elif isinstance(current, Atoms):
            raise ValueError(f"location {format_location(loc)!r} is inside a structure already stored at "
                             f"{format_location(loc[:depth + 1])!r}")
        node = current


def _get(node, i):
    if isinstance(node, SparseList):
        return node.get(i)
    return node[i] if i < len(node) else None


def _set(node, i, value):
    if isinstance(node, SparseList):
        node.set(i, value)
        return
    # a plain list (an output that was itself a list): filled up to i, as it is small
    if len(node) <= i:
        node.extend([None] * (i + 1 - len(node)))
    node[i] = value


def tree_from_pairs(pairs):
    """Build a tree of SparseLists from ``(location, Atoms)`` pairs."""
    tree = SparseList()
    for loc, atoms in pairs:
        place_in_tree(tree, loc, atoms)
    return tree
