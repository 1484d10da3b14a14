"""Choosing where chunks run: in the calling process, or in a pool of worker processes."""

import contextlib
import logging
import os
import uuid
import warnings
from concurrent.futures import Executor, Future

from wfl_like.autoparallelize.workers import devices, mpi as mpipool_support, threads
from wfl_like.autoparallelize.workers.isolation import copy_rngs, isolated, round_trip
from wfl_like.autoparallelize.workers.packing import packed
from wfl_like.autoparallelize.workers.opcall import (ByValue, CallNotHere, begin_call, in_worker, install,
                                                     run_inherited, run_installed, run_portable)
from wfl_like.autoparallelize.workers.pool import START_METHOD_ENV, WorkerPool, default_context
from wfl_like.autoparallelize.workers.threads import available_cpus

NUM_PROCESSES_ENV = "WFL_NUM_PYTHON_SUBPROCESSES"

log = logging.getLogger(__name__)


class SerialExecutor(Executor):
    """Runs each task at once in the calling process.

    Parameters
    ----------
    isolate : bool, default True
        Run on copies of the arguments, equal to what a worker would unpickle, so an
        operation that changes its inputs in place never changes the caller's objects:
        outputs and side effects are those of a pool run.  Structures just read from a
        file need it too: the items of a chunk that failed are run again one by one, and
        must start from what was read, not from what the failed attempt left (nor from
        generators it advanced).
    """

    def __init__(self, isolate=True):
        self.isolate = isolate

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` now; with ``isolate``, on a pickle round trip of the arguments."""
        def task():
            call_args, call_kwargs = round_trip((args, kwargs)) if self.isolate else (args, kwargs)
            return fn(*call_args, **call_kwargs)

        return _run_now(task)

    def submit_chunk(self, fn, first, items, rngs):
        """Run ``fn(first, items, rngs)`` now; with ``isolate``, on copies of the items and generators
        (:func:`~wfl_like.autoparallelize.workers.isolation.isolated`, cheaper than a pickle round trip)."""
        if self.isolate:
            return _run_now(lambda: fn(first, isolated(items), copy_rngs(rngs)))
        return _run_now(lambda: fn(first, items, rngs))


def _run_now(task):
    future = Future()
    future.set_running_or_notify_cancel()
    try:
        future.set_result(task())
    except BaseException as exc:
        future.set_exception(exc)
    return future


class _CallOnce:
    """Submits chunks to an executor that is not ours, with the call sent only to processes that lack it.

    The first chunks carry the call (pickled by value, maybe large: a potential among the
    op's arguments); once one came back computed, the next go without it.  A process that
    has not got it answers :class:`~wfl_like.autoparallelize.workers.opcall.CallNotHere` at
    once, and gets its chunk again with the call: one short extra trip per process and call,
    instead of the call with every chunk.
    """

    def __init__(self, executor, together, init_args, pack):
        self.executor, self.together, self.init_args, self.pack = executor, together, init_args, pack
        self.call_id = uuid.uuid4().hex     # new for every call, even one with the same arguments
        self.lean = False

    def submit(self, chunk, timeout):
        """``submit(chunk, timeout) -> Future`` of the chunk's outputs (no time limit is enforced)."""
        relay = _Relay()
        self._send(relay, chunk, with_call=not self.lean)
        return relay

    def _send(self, relay, chunk, with_call):
        items = packed(chunk.items) if self.pack else chunk.items
        inner = self.executor.submit(run_portable, self.together if with_call else None, self.init_args,
                                     self.call_id, chunk.first, items, chunk.rngs, self.pack)
        relay.inner = inner
        inner.add_done_callback(lambda future: self._settle(relay, chunk, future))

    def _settle(self, relay, chunk, inner):
        if inner.cancelled():
            Future.cancel(relay)
            return
        error = inner.exception()
        if isinstance(error, CallNotHere):
            self._send(relay, chunk, with_call=True)
        elif error is not None:
            relay.set_exception(error)
        else:
            self.lean = True
            relay.set_result(inner.result())


class _Relay(Future):
    """The future of a chunk that may be submitted twice: cancelling it cancels the submission under way."""

    inner = None

    def cancel(self):
        inner = self.inner
        if inner is not None and not inner.cancel():
            return False
        return super().cancel()


def num_workers(requested):
    """Worker processes to use: ``requested``, else ``$WFL_NUM_PYTHON_SUBPROCESSES``, else 0.

    Raises
    ------
    ValueError
        The env var is not a whole number >= 0; the message names it.
    """
    if requested is not None:
        return requested
    text = os.environ.get(NUM_PROCESSES_ENV, "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"environment variable {NUM_PROCESSES_ENV}={text!r} is not a whole number >= 0; "
                         f"set it to the number of worker processes (0 for none) or unset it")
    return value


def executor_slots(executor):
    """How many tasks an executor runs at once, as far as it tells (else the CPU count)."""
    for attribute in ("_max_workers", "max_workers", "size"):
        value = getattr(executor, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return os.cpu_count() or 1


def forks_workers(workers, executor=None):
    """Whether :func:`chunk_runner` with these ``workers`` and ``executor`` runs the chunks on
    worker processes of its own, started with ``fork`` (so that they inherit the driver's objects)."""
    if executor is not None or not workers or in_worker():
        return False
    try:
        return default_context().get_start_method() == "fork"
    except ValueError:
        return False        # a bad start method: chunk_runner says so


@contextlib.contextmanager
def chunk_runner(call, workers, initializer, isolate=True, executor=None, initializer_timeout=None,
                 max_items_per_worker=None, inputs=None, lendable_inputs=None):
    """Yield ``(submit, slots)``: ``submit(chunk, timeout) -> Future`` and how many chunks run at once.

    The pool's workers receive ``call`` once, when they start, instead of with every chunk;
    they are started as chunks arrive, so never more of them than chunks.
    ``isolate`` is passed to :class:`SerialExecutor` for serial runs.  With ``executor``
    (any :class:`concurrent.futures.Executor`), chunks run there instead; it is the
    caller's, so it is left running.  ``initializer_timeout`` and ``max_items_per_worker``
    are those of :class:`~wfl_like.autoparallelize.workers.pool.WorkerPool` (ignored unless it runs).
    ``inputs``: the whole sequence of items the chunks are made of (a tuple that nothing
    changes while the call runs), where :func:`forks_workers` holds: the workers inherit it,
    and a chunk of its items is sent as its place in it, not as the items; ``lendable_inputs``
    says which of them the workers may lend to the operation (see
    :func:`~wfl_like.autoparallelize.workers.opcall.run_inherited`).
    Leaving the block normally waits for the workers to finish; leaving it by an
    exception (including Ctrl-C) kills them at once.
    """
    init_func, init_args = initializer
    plan = _device_plan(call.name, workers, executor)
    thread_limit = _thread_limit(call.name, workers, executor)
    if executor is not None:
        # the caller's executor (Dask, loky, a ProcessPoolExecutor ...): the call travels by
        # value with every chunk, and is installed once per process there
        # the MPI ranks are other processes: chunks travel pickled both ways, and are packed
        # for it; another executor may run a task in this very process
        across = executor is mpipool_support.active_executor()
        yield _CallOnce(executor, ByValue((call, init_func)), tuple(init_args), across).submit, \
            executor_slots(executor)
        return
    if workers and in_worker():
        log.info("%s: called inside a worker process, so it runs serially there", call.name)
        workers = 0
    if workers == 0:
        begin_call()
        if init_func is not None:
            init_func(*init_args)
        executor = SerialExecutor(isolate)
        # no worker to kill in a serial run: a time limit cannot be enforced
        yield (lambda chunk, timeout: executor.submit_chunk(call.run, chunk.first, chunk.items, chunk.rngs)), 1
        return
    context = default_context()
    if plan is not None:
        devices.refuse_fork_after_cuda(context.get_start_method())
        log.info("%s: %s=%d: worker k gets %s=%s[k %% %d]", call.name, devices.GPUS_ENV, len(plan),
                 devices.VISIBLE_ENV, plan, len(plan))
    if thread_limit is not None:
        log.info("%s: native libraries (BLAS, OpenMP) limited to %d thread%s in each of the %d workers", call.name,
                 thread_limit, "" if thread_limit == 1 else "s", workers)
    inherited = inputs if context.get_start_method() == "fork" else None
    pool_init, pool_initargs = _worker_initializer(call, init_func, init_args, context.get_start_method(),
                                                   inherited, lendable_inputs)
    pool = WorkerPool(workers, initializer=pool_init, initargs=pool_initargs, mp_context=context,
                      on_demand=True, initializer_timeout=initializer_timeout,
                      max_items_per_worker=max_items_per_worker, devices=plan, threads=thread_limit,
                      send_ahead=True)
    try:
        yield _pool_submit(pool, inherited), workers
    except BaseException:
        pool.terminate()
        raise
    pool.shutdown(wait=True)


def _pool_submit(pool, inherited):
    """``submit(chunk, timeout) -> Future`` of the pool: a chunk of ``inherited`` goes as its
    place there (the workers hold their own copy), any other as its items, packed.

    Only a chunk's first run goes as a place: a worker may have lent its own inherited items
    to the operation (:func:`~wfl_like.autoparallelize.workers.opcall.run_inherited`), so a
    chunk run again, or its items one by one, go as the driver's items, which no operation
    has seen.  Chunks come in input order, so a chunk that begins before the end of those
    sent so far is being run again.
    """
    sent_up_to = 0

    def submit(chunk, timeout):
        nonlocal sent_up_to
        n_items = len(chunk.items)
        if inherited is not None and chunk.first >= sent_up_to and _taken_from(inherited, chunk):
            sent_up_to = chunk.first + n_items
            task = run_inherited, (chunk.first, n_items, chunk.rngs)
        else:
            task = run_installed, (chunk.first, packed(chunk.items), chunk.rngs)
        return pool.submit_task(*task, timeout=timeout, weight=n_items)

    return submit


def _taken_from(inputs, chunk):
    """Whether the chunk's items are ``inputs[chunk.first:]`` themselves, object for object: the
    workers are sent places in ``inputs`` only where they would take these very items."""
    part = inputs[chunk.first:chunk.first + len(chunk.items)]
    return len(part) == len(chunk.items) and all(a is b for a, b in zip(part, chunk.items))


def _worker_initializer(call, init_func, init_args, start_method, inputs=None, lendable_inputs=None):
    """``(initializer, initargs)`` of the pool: install the call (and ``inputs``, for forked
    workers to take chunks from), then run the user's initializer.

    Forked workers inherit all of them.  Others receive the call and the initializer pickled by
    value, in one payload (and chunks as their items):
    an initializer and an operation defined in a script share its globals there as in
    the driver (a potential the initializer keeps in a global is the op's), which two
    payloads, unpickled apart, would not.
    """
    if start_method == "fork":
        return install, (call, init_func, tuple(init_args), True, inputs, lendable_inputs)
    try:
        together = ByValue((call, init_func))
    except Exception as exc:
        raise TypeError(f"operation {call.name} or its arguments cannot be sent to {start_method} workers: "
                        f"{type(exc).__name__}: {exc}; make them picklable, or use {START_METHOD_ENV}=fork") from exc
    return install_together, (together, tuple(init_args))


def install_together(together, init_args):
    """Worker initializer: unpickle the call and the user's initializer from one payload, then
    :func:`~wfl_like.autoparallelize.workers.opcall.install` them."""
    call, init_func = together.load()
    install(call, init_func, init_args)


def _device_plan(name, workers, executor):
    """The devices of ``WFL_TORCH_N_GPUS`` for this call's own workers, or None.

    Checked before any work.  Where the call has no workers of wfl_like's to give them
    to, a set variable is said to be unused (a warning), except inside a worker, whose
    nested calls run serially on the worker's own device, and on the MPI ranks, which
    took their devices when they started.

    Raises
    ------
    ValueError
        ``WFL_TORCH_N_GPUS`` has a bad value, or asks for more GPUs than there are.
    """
    own = _own_workers(workers, executor)
    if own is None:
        return None
    if own:
        return devices.device_plan()
    wanted = devices.requested_gpus()
    if wanted is not None:
        _say_not_applied(devices.GPUS_ENV, wanted, name, executor, "give its workers their devices",
                         f"{devices.VISIBLE_ENV} is left as it is")
    return None


def _thread_limit(name, workers, executor):
    """Threads per worker for this call's own workers, or None to leave the libraries alone.

    ``max(1, cpus // workers)``, unless ``WFL_LIKE_WORKER_THREADS`` says otherwise or the
    driver's environment sets a thread count of its own
    (:func:`~wfl_like.autoparallelize.workers.threads.worker_thread_limit`).  Serial runs, nested
    calls in a worker, the MPI ranks (limited when they started) and foreign executors are
    left alone; where ``WFL_LIKE_WORKER_THREADS`` is set and the call has no workers of
    wfl_like's to apply it to, that is said (a warning).

    Raises
    ------
    ValueError
        ``WFL_LIKE_WORKER_THREADS`` has a bad value (checked before any work).
    """
    explicit = threads.requested_threads()
    own = _own_workers(workers, executor)
    if own is None:
        return None
    if own:
        return threads.worker_thread_limit(workers, available_cpus())
    if explicit is not None:
        _say_not_applied(threads.THREADS_ENV, explicit, name, executor, "limit its workers' threads",
                         "the native libraries' thread counts are left as they are")
    return None


def _own_workers(workers, executor):
    """Whether this call starts workers of wfl_like's own, to give devices and thread limits;
    None where that is not this call's to do (a call nested in a worker, the MPI ranks, which
    got theirs when they started)."""
    if devices.worker_index() is not None or in_worker():
        return None
    if executor is not None and executor is mpipool_support.active_executor():
        return None
    return executor is None and bool(workers)


def _say_not_applied(variable, value, name, executor, executors_way, what_stays):
    """Warn that an environment setting for workers does not reach this call's work."""
    where = (f"executor {type(executor).__name__} is not wfl_like's ({executors_way} the executor's own way)"
             if executor is not None else "it runs serially, in this process")
    # past this function, _thread_limit or _device_plan, chunk_runner, contextlib and the engine
    warnings.warn(f"{variable}={value} is not applied to {name}: {where}; {what_stays}", stacklevel=9)
