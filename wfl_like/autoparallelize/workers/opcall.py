"""How one chunk is handed to the user's operation; this code runs in the workers."""

import collections
import inspect
import os
import threading
from dataclasses import dataclass

from wfl_like.autoparallelize.workers.isolation import isolated, lendable
from wfl_like.autoparallelize.workers.packing import packed, unpacked
from wfl_like.errors import ItemAbortedError, OpOutputError

PER_ITEM_INFO = "_autopara_per_item_info"
# Set in pool workers, so that autoparallelized calls made by an op run serially there.
NESTED_ENV = "WFL_LIKE_IN_WORKER"


def in_worker():
    """Whether this process is a wfl_like pool worker."""
    return os.environ.get(NESTED_ENV) == "1"


# Per thread: an executor's worker thread, or the driver in a serial run, may be inside an op
_running = threading.local()


def in_operation():
    """Whether this thread is running an operation's chunk now (so a call made here is nested in another)."""
    return getattr(_running, "depth", 0) > 0


def op_name(op):
    """``module.qualname`` of an operation, for messages and logs."""
    module = getattr(op, "__module__", None) or "?"
    return f"{module}.{getattr(op, '__qualname__', repr(op))}"


def takes_argument(op, name):
    """Whether ``op`` has a parameter called ``name``."""
    try:
        params = inspect.signature(op).parameters
    except (TypeError, ValueError):
        return False
    return name in params


@dataclass(frozen=True)
class OpCall:
    """An operation with its fixed arguments, ready to be applied to chunks of inputs.

    Attributes
    ----------
    op : callable
        ``op(items, *args, **kwargs)`` returning one output per item.
    args, kwargs
        The other arguments of the operation.
    iterable_arg : int or str
        Where the list of items goes among the arguments.
    per_item_info : bool
        Whether ``op`` takes ``_autopara_per_item_info``.
    inherited_item_info : list of dict or None
        Per-item info given by an enclosing autoparallelized call, indexed by item.
    """

    op: object
    args: tuple
    kwargs: dict
    iterable_arg: object = 0
    per_item_info: bool = False
    inherited_item_info: list = None

    @property
    def name(self):
        return op_name(self.op)

    def run(self, first, items, rngs):
        """Apply the operation to one chunk.

        Parameters
        ----------
        first : int
            Input index of ``items[0]``.
        items : list
        rngs : list of numpy.random.Generator or None

        Returns
        -------
        list
            One output per item (``None`` where the operation gave none).
        """
        kwargs = dict(self.kwargs)
        if self.per_item_info:
            kwargs[PER_ITEM_INFO] = self._item_info(first, rngs)
        if isinstance(self.iterable_arg, int):
            args = self.args[:self.iterable_arg] + (items,) + self.args[self.iterable_arg:]
        else:
            args = self.args
            kwargs[self.iterable_arg] = items
        _running.depth = getattr(_running, "depth", 0) + 1
        try:
            outputs = self.op(*args, **kwargs)
        except SystemExit as exc:
            # sys.exit() in an op must not end the caller's script quietly
            raise RuntimeError(f"operation {self.name} called sys.exit({exc.code!r}) on input items "
                               f"{first}..{first + len(items) - 1}") from exc
        finally:
            _running.depth -= 1
        if outputs is None:
            return [None] * len(items)
        try:
            outputs = list(outputs)
        except TypeError:
            raise OpOutputError(f"operation {self.name} returned a {type(outputs).__name__} for input items "
                                f"{first}..{first + len(items) - 1}; it must return a list with one output "
                                f"(or None) per input item") from None
        if len(outputs) != len(items):
            raise OpOutputError(f"operation {self.name} returned {len(outputs)} outputs for {len(items)} "
                                f"input items ({first}..{first + len(items) - 1}); it must return exactly "
                                f"one output (or None) per input item")
        return outputs

    def _item_info(self, first, rngs):
        indices = range(first, first + len(rngs))
        if self.inherited_item_info is not None:
            return [self.inherited_item_info[i] for i in indices]
        infos = [{"item_i": i} for i in indices]
        for info, rng in zip(infos, rngs):
            if rng is not None:
                info["rng"] = rng
        return infos


# The call a pool worker applies, set once per worker by `install` so that the
# operation and its arguments are not sent again with every chunk.
_installed = None
# The call's inputs, where this worker was forked with them (see run_inherited), and which
# of them the operation may be given themselves (held by nothing else: one byte each, or None).
_inherited_inputs = None
_lendable_inputs = None


class ByValue:
    """An object pickled by value with cloudpickle, for workers that do not inherit it.

    Forked workers inherit the operation; spawned ones receive it, and plain pickle
    refuses lambdas, closures and functions defined in ``__main__`` or a notebook.
    """

    def __init__(self, obj):
        import cloudpickle

        self.payload = cloudpickle.dumps(obj)

    def load(self):
        import cloudpickle

        return cloudpickle.loads(self.payload)


def _unwrap(obj):
    return obj.load() if isinstance(obj, ByValue) else obj


# How many calls this process has begun serving: what operations keep per process for one
# call (built calculators) is kept for that call only, so a later call never gets a
# calculator built from a model file that has changed since.
_call_generation = 0


def begin_call():
    """Mark the start of a call served by this process (a worker's, or a serial run's)."""
    global _call_generation
    _call_generation += 1


def call_generation():
    """The number of the call this process serves now (see :func:`begin_call`)."""
    return _call_generation


def install(call, initializer=None, initargs=(), own_process=True, inputs=None, lendable_inputs=None):
    """Worker initializer: keep ``call`` for :func:`run_installed`, then run the user's initializer.

    ``call`` and ``initializer`` may come wrapped in :class:`ByValue`.  ``own_process``
    says this process is a pool worker of ours (not, say, a thread of the caller's).
    ``inputs``: the call's whole input sequence, which a forked worker inherited from the
    driver, for :func:`run_inherited`; ``lendable_inputs``: which of them nothing else holds
    (:func:`~wfl_like.autoparallelize.workers.isolation.held_by_the_inputs_alone`).
    """
    global _installed, _inherited_inputs, _lendable_inputs
    call, initializer = _unwrap(call), _unwrap(initializer)
    _installed = call
    _inherited_inputs = inputs
    _lendable_inputs = lendable_inputs if inputs is not None else None
    begin_call()
    if own_process:
        # an op that calls another autoparallelized op runs it serially: a worker cannot have workers
        os.environ[NESTED_ENV] = "1"
    if initializer is not None:
        initializer(*initargs)


def run_installed(first, items, rngs):
    """Apply the call set by :func:`install` to one chunk; the outputs are packed for the trip back
    (:mod:`~wfl_like.autoparallelize.workers.packing`)."""
    return packed(_installed.run(first, unpacked(items), rngs))


def run_inherited(first, count, rngs):
    """:func:`run_installed` on inputs ``first .. first + count - 1`` of those :func:`install` kept.

    Each chunk is sent here once: the driver sends a chunk it runs again (split after a
    failure, retried after its worker died) as its items, as they stand in the driver.  So
    the operation may be given this process's own inherited items, and change them in place,
    where nothing else can see the change: where nothing but the inputs holds an item
    (checked by the driver before the fork) and no part of an item is shared
    (:func:`~wfl_like.autoparallelize.workers.isolation.lendable`).  Otherwise it gets copies
    (:func:`~wfl_like.autoparallelize.workers.isolation.isolated`, equal to what unpickling
    the chunk gives), as in a serial run.  Workers forked after this one start from the
    driver's items, which no operation has seen.
    """
    if _inherited_inputs is None or first < 0 or first + count > len(_inherited_inputs):
        raise RuntimeError(f"items {first}..{first + count - 1} are not among this worker's inherited inputs "
                           f"({'none' if _inherited_inputs is None else len(_inherited_inputs)})")
    items = list(_inherited_inputs[first:first + count])
    if not (_lendable_inputs is not None and b"\x00" not in _lendable_inputs[first:first + count]
            and lendable(items)):
        items = isolated(items)
    return packed(_installed.run(first, items, rngs))


# The calls installed in this process by run_portable, by the id the driver gave each: a
# thread-based executor (threads of one process, Dask's threaded workers) may serve several
# calls at once, so a chunk finds its own call by id, never the call installed last.  Only a
# few are kept: an old call's potential is not held for the process's life.
_portable_calls = collections.OrderedDict()
_portable_lock = threading.Lock()
_PORTABLE_KEPT = 4


class CallNotHere(Exception):
    """A chunk came without its call to a process that has not got it yet: send it again, with the call."""


def run_portable(together, initargs, call_id, first, items, rngs, pack_outputs=False):
    """Apply a call sent by value to one chunk, on an executor that is not ours.

    ``together`` is a :class:`ByValue` of ``(call, initializer)``: one payload, so that an
    initializer and an operation defined in a script share its globals in the worker as
    they do in the driver.  It is unpickled, and the initializer run, once per process
    and call (``call_id``, new for every call, even one with the same arguments), not once
    per chunk: the executor's workers are long-lived and shared.  ``together`` may be None
    once the driver knows that processes have the call: a process without it raises
    :class:`CallNotHere`, and gets the chunk again with the call.  A BaseException that is
    not an Exception (KeyboardInterrupt, ...) raised there is raised as
    :class:`~wfl_like.errors.ItemAbortedError`: on a worker it fails the chunk, not the run.
    ``pack_outputs``: pack the outputs for the trip back (only where they are sure to be
    pickled: an executor may run a task in the driver's own process).
    """
    try:
        call = _portable_call(together, initargs, call_id)
        outputs = call.run(first, unpacked(items), rngs)
        return packed(outputs) if pack_outputs else outputs
    except Exception:
        raise
    except BaseException as exc:
        raise item_aborted(exc) from exc


def _portable_call(together, initargs, call_id):
    """The call ``call_id`` of this process, installed first if need be (its initializer run once)."""
    with _portable_lock:
        call = _portable_calls.get(call_id)
        if call is not None:
            _portable_calls.move_to_end(call_id)
            return call
        if together is None:
            raise CallNotHere(call_id)
        # under the lock: two threads given the same new call run its initializer once; the
        # call is published only once its initializer has finished
        call, initializer = together.load()
        install(call, initializer, initargs, own_process=False)
        _portable_calls[call_id] = call
        while len(_portable_calls) > _PORTABLE_KEPT:
            _portable_calls.popitem(last=False)
        return call


def item_aborted(exc):
    """The :class:`~wfl_like.errors.ItemAbortedError` that stands for ``exc``, a BaseException
    that is not an Exception raised by the operation where it cannot be a stop of the run."""
    text = str(exc)
    return ItemAbortedError(f"{type(exc).__name__}{': ' + text if text else ''} (raised by the operation)")
