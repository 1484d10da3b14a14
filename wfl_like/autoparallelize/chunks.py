"""Grouping inputs into chunks: pure functions, no I/O, no processes."""

import itertools
import threading
import time
from dataclasses import dataclass

from ase import Atoms

from wfl_like.autoparallelize.frame_items import FrameItem
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
    keys : list of str, optional
        Cache keys of the items, when a journal is kept.
    cached : list, optional
        The outputs, when they were found in the journal: nothing to compute.
    """

    first: int
    items: list
    locations: list
    rngs: list
    keys: list = None
    cached: list = None

    @property
    def indices(self):
        """Input indices of the items of this chunk."""
        return range(self.first, self.first + len(self.items))


def location_of_item(item):
    """An input's location: stored in an ``Atoms``, a frame's own, or a ``ConfigSet`` group's own."""
    if type(item) is Atoms:
        # the common case first, without the isinstance ladder: it is asked of every input
        return location_of(item)
    if isinstance(item, FrameItem):
        return item.location
    if isinstance(item, Atoms):
        return location_of(item)
    if isinstance(item, ConfigSet):
        return item.enclosing_location or None
    return None


def item_rngs(rng):
    """An endless sequence of independent generators, one per input, in input order.

    Each is spawned from ``rng`` in turn, so input ``i`` always gets the ``i``-th child
    whatever the number of processes or the chunk size.
    """
    if rng is None:
        return itertools.repeat(None)
    return (rng.spawn(1)[0] for _ in itertools.count())


def make_chunks(inputs, chunk_size, rng=None, lookup=None):
    """Group ``inputs`` into :class:`Chunk` s of ``chunk_size`` items, lazily.

    Parameters
    ----------
    inputs : iterable
        Any iterable; it is consumed one chunk at a time.  The frames of input files
        (:func:`~wfl_like.autoparallelize.frame_items.frame_items`) are chunked like any
        other items.
    chunk_size : int or AdaptiveChunkSize
        Items per chunk (the last one may be shorter); an :class:`AdaptiveChunkSize` is
        asked again for each new chunk, told how many inputs are left where that is known
        (a list, a tuple or a range).
    rng : numpy.random.Generator, optional
        Parent of the per-item generators.
    lookup : callable, optional
        ``lookup(first, items, rngs) -> [(key, found, output), ...]`` of consecutive items
        (asked of a few dozen at a time, ahead of the chunks being made): items found are
        grouped into chunks of their own with ``cached`` outputs.  Each chunk holds
        consecutive items, so chunks stay in input order.

    Yields
    ------
    Chunk
    """
    rngs = item_rngs(rng)
    size_of = chunk_size if callable(chunk_size) else (lambda remaining: chunk_size)
    if lookup is None and isinstance(inputs, (list, tuple)):
        yield from _slices(inputs, size_of, rngs)
        return
    # how many inputs there are, where that is known without reading them
    total = len(inputs) if isinstance(inputs, (list, tuple, range)) else None
    todo, done = _Batch(found=False), _Batch(found=True)
    for index, item, item_rng, (key, found, output) in _looked_up(inputs, rngs, lookup):
        batch, other = (done, todo) if found else (todo, done)
        if other:
            yield other.flush()
        if not batch:
            batch.size = size_of(None if total is None else total - index)
        batch.add(index, item, item_rng, key, output)
        if len(batch) >= batch.size or (found and len(batch) >= _CACHED_BATCH):
            yield batch.flush()
    for batch in (todo, done):
        if batch:
            yield batch.flush()


def _looked_up(inputs, rngs, lookup):
    """``(index, item, rng, (key, found, output))`` of each input, in order.

    The frames of input files are immutable: they are read a window ahead and looked up in
    one query.  Any other item is looked up as soon as it comes, before the next is read
    (iterating a ConfigSet writes each structure's location into it).  A frame whose key
    repeats an earlier one in its window is not found unless an earlier run journaled it,
    as one whose first copy is still running is not: both are computed.
    """
    inputs = iter(inputs)
    first, ahead, broken = 0, _END, None
    while broken is None:
        item = next(inputs, _END) if ahead is _END else ahead
        ahead = _END
        if item is _END:
            return
        window = [item]
        if lookup is not None and type(item) is FrameItem:
            while len(window) < _LOOKUP_WINDOW:
                try:
                    ahead = next(inputs, _END)
                except Exception as error:
                    # A bad frame read ahead must not stop the frames before it: they go
                    # out (and are run and journaled) exactly as they would without the
                    # window, and the error is raised where it would have been.
                    broken, ahead = error, _END
                    break
                if type(ahead) is not FrameItem:
                    break
                window.append(ahead)
                ahead = _END
        window_rngs = list(itertools.islice(rngs, len(window)))
        try:
            looked = lookup(first, window, window_rngs) if lookup is not None else [(None, False, None)]
        except Exception as error:
            if broken is not None:
                # the journal's error wins, as it comes first; the input's must not be lost
                error.add_note(f"Also, reading the inputs after item {first + len(window) - 1} failed: "
                               f"{type(broken).__name__}: {broken}")
            raise
        yield from zip(range(first, first + len(window)), window, window_rngs, looked)
        first += len(window)
    raise broken


_END = object()

# Inputs looked up in the journal at once: one query for them all, and few enough that the
# first chunk goes out without delay.
_LOOKUP_WINDOW = 64


def _slices(inputs, size_of, rngs):
    """:func:`make_chunks` of a list or tuple with no journal: the same chunks, cut as slices
    (it is asked of every item of every run)."""
    first = 0
    while first < len(inputs):
        items = list(inputs[first:first + max(1, size_of(len(inputs) - first))])
        yield Chunk(first=first, items=items, locations=[location_of_item(item) for item in items],
                    rngs=list(itertools.islice(rngs, len(items))))
        first += len(items)


# Items found in the journal are grouped like the others, but never more than this many at
# once: their outputs are held in memory until stored.
_CACHED_BATCH = 1000


# Chunks per slot after which a measurement is judged, if a chunk's worth of time has not
# passed; after the fewer, only if it says to grow chunks as fast as they may grow.
_SETTLED_AFTER = 8
_GROWN_AFTER = 2


class AdaptiveChunkSize:
    """Chunk sizes that follow the cost of the operation: ``num_inputs_per_python_subprocess="auto"``.

    Chunks start with one item.  As chunks complete, the time a worker spends per item is
    estimated from the rate at which items come back (wall time x slots / items, which
    holds for any executor and counts the round trip to the worker as part of the cost),
    and the size is set so that a chunk takes about ``target`` seconds: cheap operations
    get large chunks, so the round trip stops dominating; expensive ones keep chunks of
    one, so no worker sits idle at the end and a failure or a kill costs little.  A
    measurement is judged once ``target`` seconds or eight chunks per slot have passed,
    or after two chunks per slot where it says to grow chunks as fast as they may grow
    (eightfold).  Near the end of an input of known length, a chunk is at most a slot's
    share of what is left.  Outputs do not depend on the sizes (every item has its own
    random stream).

    Parameters
    ----------
    target : float
        Seconds of work wanted per chunk.
    maximum : int
        Largest chunk; it bounds the items held in memory.
    """

    def __init__(self, target=0.2, maximum=1000):
        self.target, self.maximum = target, maximum
        self.size = 1
        self._since = None        # when the current measurement began
        self._items = 0           # items completed since then
        self._slots = None        # chunks running at once, as last reported
        self._lock = threading.Lock()     # completions are reported from executors' threads

    def __call__(self, remaining=None):
        """The size of the next chunk.

        Near the end of a known input, chunks shrink so that the last inputs are spread over
        every slot: no worker waits idle while another finishes a large last chunk.

        Parameters
        ----------
        remaining : int, optional
            The inputs left, the next chunk's included, where that is known.

        Returns
        -------
        int
            At least 1.
        """
        if remaining is None or self._slots is None:
            return self.size
        return max(1, min(self.size, -(-remaining // self._slots)))

    def completed(self, n_items, slots):
        """Note that a chunk of ``n_items`` came back, with ``slots`` chunks running at once."""
        now = time.monotonic()
        with self._lock:
            self._slots = slots
            if self._since is None:
                # the first chunk also paid for starting the workers: measure from its end
                self._since = now
                return
            self._items += n_items
            elapsed = now - self._since
            # judge after a chunk's worth of time, or after eight chunks per slot when chunks
            # come back faster than that
            settled = elapsed >= self.target or self._items >= _SETTLED_AFTER * self.size * slots
            if elapsed <= 0 or not (settled or self._items >= _GROWN_AFTER * self.size * slots):
                return
            per_item = elapsed * slots / self._items
            # at most 8-fold growth per measurement: the round trip's share shrinks as
            # chunks grow, so the first estimates undervalue large chunks
            largest = min(self.maximum, 8 * self.size)
            size = max(1, min(largest, int(self.target / per_item)))
            if not settled and size < largest:
                # two chunks per slot are trusted only to say that chunks are far too small
                # (cheap operations then reach their size quickly); anything finer waits
                return
            self.size = size
            self._since, self._items = now, 0


class _Batch:
    """Consecutive items being gathered into a chunk: all to compute, or all found."""

    def __init__(self, found):
        self.found = found
        self.size = None      # items wanted in this chunk, fixed when its first item comes
        self._reset()

    def _reset(self):
        self.first, self.items, self.rngs, self.keys, self.outputs = None, [], [], [], []

    def add(self, index, item, rng, key, output):
        if self.first is None:
            self.first = index
        self.items.append(item)
        self.rngs.append(rng)
        self.keys.append(key)
        self.outputs.append(output)

    def __len__(self):
        return len(self.items)

    def flush(self):
        chunk = Chunk(first=self.first, items=self.items, locations=[location_of_item(i) for i in self.items],
                      rngs=self.rngs, keys=self.keys if self.keys[0] is not None else None,
                      cached=self.outputs if self.found else None)
        self._reset()
        return chunk
