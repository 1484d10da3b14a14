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


def iter_tree(tree, prefix=()):
    """Yield ``(location, Atoms)`` for every ``Atoms`` in a nested list, depth first.

    ``None`` entries are placeholders for missing items and are passed over, so the
    locations of the items after them stay what they were.
    """
    for i, item in enumerate(tree):
        if item is None:
            continue
        if isinstance(item, Atoms):
            yield prefix + (i,), item
        else:
            yield from iter_tree(item, prefix + (i,))


def place_in_tree(tree, loc, value):
    """Put ``value`` at ``loc`` in a nested list, creating the lists on the way.

    Gaps left by items that were never stored are ``None``, which :func:`iter_tree`
    passes over.
    """
    if not loc:
        raise ValueError("cannot place an item at the empty location")
    node = tree
    for depth, i in enumerate(loc):
        if len(node) <= i:
            node.extend([None] * (i + 1 - len(node)))
        if depth == len(loc) - 1:
            if node[i] is not None:
                raise ValueError(f"location {format_location(loc)!r} already holds a stored output; "
                                 f"each input's output is stored once")
            node[i] = value
            return
        if node[i] is None:
            node[i] = []
        elif isinstance(node[i], Atoms):
            raise ValueError(f"location {format_location(loc)!r} is inside a structure already stored at "
                             f"{format_location(loc[:depth + 1])!r}")
        node = node[i]


def tree_from_pairs(pairs):
    """Build a nested list from ``(location, Atoms)`` pairs."""
    tree = []
    for loc, atoms in pairs:
        place_in_tree(tree, loc, atoms)
    return tree
