"""Grouping inputs into chunks: pure functions, no I/O, no processes."""

import itertools
from dataclasses import dataclass

from ase import Atoms

from wfl_like.configset import ConfigSet
from wfl_like.locations import location_of


@dataclass
class Chunk:
    """Consecutive inputs that one call of the operation receives.

    Attributes
    ----------
    first : int
        Index in the whole input of ``items[0]``.
    items : list
        The inputs.
    locations : list of tuple or None
        Where each input sits in its collection, so outputs are stored at the same place.
    rngs : list of numpy.random.Generator or None
        One independent generator per input, or ``None`` when no ``rng`` was given.
    """

    first: int
    items: list
    locations: list
    rngs: list

    @property
    def indices(self):
        """Input indices of the items of this chunk."""
        return range(self.first, self.first + len(self.items))


def location_of_item(item):
    """An input's location: stored in an ``Atoms``, or a ``ConfigSet`` group's own."""
    if isinstance(item, Atoms):
        return location_of(item)
    if isinstance(item, ConfigSet):
        return item._enclosing or None
    return None


def item_rngs(rng):
    """An endless sequence of independent generators, one per input, in input order.

    Each is spawned from ``rng`` in turn, so input ``i`` always gets the ``i``-th child
    whatever the number of processes or the chunk size.
    """
    if rng is None:
        return itertools.repeat(None)
    return (rng.spawn(1)[0] for _ in itertools.count())


def make_chunks(inputs, chunk_size, rng=None):
    """Group ``inputs`` into :class:`Chunk` s of ``chunk_size`` items, lazily.

    Parameters
    ----------
    inputs : iterable
        Any iterable; it is consumed one chunk at a time.
    chunk_size : int
        Items per chunk (the last one may be shorter).
    rng : numpy.random.Generator, optional
        Parent of the per-item generators.

    Yields
    ------
    Chunk
    """
    items = iter(inputs)
    rngs = item_rngs(rng)
    first = 0
    while True:
        batch = list(itertools.islice(items, chunk_size))
        if not batch:
            return
        yield Chunk(first=first, items=batch, locations=[location_of_item(item) for item in batch],
                    rngs=list(itertools.islice(rngs, len(batch))))
        first += len(batch)
