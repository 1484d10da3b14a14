"""Keeping a bounded number of chunks in flight, isolating failures, and handing results back in input order.

A chunk that fails is split into single items, so one bad item does not take its
chunk-mates down with it.  An item whose worker died is tried again, up to
``retries`` times; an item that raises, times out, or keeps killing its worker
becomes a :class:`~wfl_like.errors.FailedItem`, and the run goes on.
"""

import collections
import logging
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field

from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.progress import Progress
from wfl_like.errors import (FailedItem, OpOutputError, QueuedJobsTimeout, SlurmError, TaskTimeoutError,
                             WorkerDiedError, WorkerInitializerError, WorkerPoisonedError)

log = logging.getLogger("wfl_like.progress")

# Chunks queued per running slot: enough that no worker waits for the driver, few
# enough that a huge input never sits in memory at once.
IN_FLIGHT_PER_SLOT = 2
# Outputs found in the journal, held while the chunks after them are read ahead, so that the
# workers compute those while the driver stores what a resumed run had already done (bytes of
# text; an output kept otherwise counts as _HELD_GUESS bytes)
CACHED_AHEAD_BYTES = 64 * 2**20
_HELD_GUESS = 4096

# Seconds of reading a chunk's inputs after which the driver commits what its journal holds
# before it reads the next (see journal.HOLD_WHILE_WAITING).
_SLOW_INPUTS = 0.02

# Failures that say nothing about the items: they end the whole call.
_FATAL = (WorkerInitializerError, SlurmError, QueuedJobsTimeout)


@dataclass
class ChunkResult:
    """What came of one chunk: one output per item (``None`` for a failed item) and the failures."""

    chunk: Chunk
    outputs: list
    failures: list = field(default_factory=list)


class _Job:
    """A chunk on its way: one future for the whole chunk, or one per item once it was split."""

    def __init__(self, chunk, future):
        self.chunk = chunk
        self.future = future
        self.parts = None       # after a split: [(one-item chunk, future, attempts)]
        # about how much memory its outputs take while it waits, where they were found in the journal
        self.held = 0 if chunk.cached is None else _held_bytes(chunk.cached)


def run_in_order(submit, chunks, slots, op_name, retries=2, timeout=None, chunk_size=None, progress=None,
                 before_blocking=None):
    """Submit chunks and yield a :class:`ChunkResult` per chunk, in input order.

    Parameters
    ----------
    submit : callable
        ``submit(chunk, timeout) -> Future`` of the list of outputs of the chunk.
    chunks : iterable of Chunk
        Consumed lazily: at most ``IN_FLIGHT_PER_SLOT * slots`` chunks are submitted and
        not yet handed back.  Chunks found in the journal (``cached``) take no slot: the
        chunks after them are read ahead, while at most ``CACHED_AHEAD_BYTES`` of their
        outputs are held, so that the workers never wait for the driver to store them.
    slots : int
        How many chunks run at once.
    op_name : str
        For messages.
    retries : int
        How many more times an item whose worker died is tried.
    timeout : float or None
        Seconds per item; a chunk gets ``timeout`` times its length.
    chunk_size : AdaptiveChunkSize, optional
        Told of every computed chunk that comes back, to size the next ones.
    progress : wfl_like.progress.Progress, optional
        Told of every chunk handed back (a bar, log lines); by default log lines only.
    before_blocking : callable, optional
        ``before_blocking(future)``, called before the driver may block for long: with the
        next chunk to hand back, before it is waited for, or before it is run again item
        by item (it failed); with None, before the next inputs are read when reading the
        last ones took a while.  The journal commits what it holds there.

    Raises
    ------
    WorkerInitializerError
        No worker could start; nothing can run.
    """
    if progress is None:
        progress = Progress(op_name)
    in_flight = collections.deque()
    limit = IN_FLIGHT_PER_SLOT * slots
    computing = held = 0       # chunks submitted and not handed back; bytes of cached outputs held

    def note_cost(future, n_items):
        # only chunks that ran through say what an item costs
        if not future.cancelled() and future.exception() is None:
            chunk_size.completed(n_items, slots)

    def start(chunk):
        if chunk.cached is not None:
            return _Job(chunk, _completed(chunk.cached))
        job = _Job(chunk, submit(chunk, _limit(timeout, len(chunk.items))))
        if chunk_size is not None:
            job.future.add_done_callback(lambda future: note_cost(future, len(chunk.items)))
        return job

    def settle(job):
        if before_blocking is not None:
            before_blocking(job.future)
        return _settle(job, submit, op_name, retries, timeout, progress)

    slow_inputs = False     # reading the last chunk's inputs took a while (a slow generator)
    try:
        chunks = iter(chunks)
        while True:
            try:
                if slow_inputs and before_blocking is not None:
                    before_blocking(None)
                began = time.monotonic()
                chunk = next(chunks, None)
                slow_inputs = time.monotonic() - began > _SLOW_INPUTS
            except Exception:
                # The inputs broke off (a truncated file, say): the chunks already running are
                # still handed back, so that their results are journaled and a rerun after the
                # input is fixed does not compute them again.
                while in_flight:
                    yield settle(in_flight.popleft())
                raise
            if chunk is None:
                break
            job = start(chunk)
            in_flight.append(job)
            computing += chunk.cached is None
            held += job.held
            while computing >= limit or held > CACHED_AHEAD_BYTES:
                job = in_flight.popleft()
                computing -= job.chunk.cached is None
                held -= job.held
                yield settle(job)
        while in_flight:
            yield settle(in_flight.popleft())
        progress.finish()
    finally:
        # stopped early (an error, Ctrl-C): chunks not started yet are withdrawn, so that
        # an executor that outlives the call does not go on computing them
        for job in in_flight:
            job.future.cancel()
        progress.close()


def _held_bytes(outputs):
    """About how much memory the cached outputs of a chunk hold."""
    return sum(len(text) if isinstance(text := getattr(output, "text", None), (str, bytes)) else _HELD_GUESS
               for output in outputs)


def _completed(outputs):
    future = Future()
    future.set_result(outputs)
    return future


def _limit(timeout, n_items):
    return None if timeout is None else timeout * n_items


def _settle(job, submit, op_name, retries, timeout, progress):
    """Wait for a job; on failure split it into items, retry dead workers' items, record the rest."""
    try:
        outputs = job.future.result()
    except _FATAL:
        raise
    except Exception as exc:
        if isinstance(exc, OpOutputError):
            # the op's answer does not fit the chunk (e.g. it filtered its inputs): running the
            # items one by one could hide that, so every item of the chunk fails with it
            failures = [_failure(index, exc, 0) for index in job.chunk.indices]
            progress.advance(len(job.chunk.items), len(failures))
            return ChunkResult(job.chunk, [None] * len(job.chunk.items), failures)
        if len(job.chunk.items) > 1:
            log.info("%s: chunk of items %s failed (%s); running its items one by one",
                     op_name, _span(job.chunk.indices), one_line_reason(exc))
            parts = [_single(job.chunk, k) for k in range(len(job.chunk.items))]
            futures = [submit(part, timeout) for part in parts]
            results = [_settle_item(part, future, submit, op_name, retries, timeout)
                       for part, future in zip(parts, futures)]
            outputs = [output for output, _ in results]
            failures = [failure for _, failure in results if failure is not None]
        else:
            output, failure = _settle_item(job.chunk, None, submit, op_name, retries, timeout, first_error=exc)
            outputs, failures = [output], [failure] if failure is not None else []
    else:
        failures = []
    progress.advance(len(job.chunk.items), len(failures))
    return ChunkResult(job.chunk, outputs, failures)


def _settle_item(chunk, future, submit, op_name, retries, timeout, first_error=None):
    """Result of a one-item chunk as ``(output, FailedItem or None)``, retrying a dead worker's item."""
    attempts = 0
    while True:
        if first_error is None:
            try:
                return future.result()[0], None
            except _FATAL:
                raise
            except Exception as exc:
                error = exc
        else:
            error, first_error = first_error, None
        # a dead worker's item, or one whose failure left its worker unusable (and replaced),
        # may well succeed on a fresh worker
        if isinstance(error, (WorkerDiedError, WorkerPoisonedError)) and attempts < retries:
            attempts += 1
            log.info("%s: item %d: %s; trying again (%d of %d)", op_name, chunk.first,
                     one_line_reason(error), attempts, retries)
            future = submit(chunk, timeout)
            continue
        if isinstance(error, WorkerPoisonedError):
            error = error.error
        return None, _failure(chunk.first, error, attempts)


def _failure(index, error, attempts):
    if isinstance(error, WorkerDiedError):
        reason = f"worker died with {error.describe()}" + (f" ({attempts + 1} times)" if attempts else "")
    elif isinstance(error, TaskTimeoutError):
        reason = f"timed out after {error.timeout:g} s"
    else:
        reason = one_line_reason(error)
    remote = error.__cause__
    tb_text = getattr(remote, "text", None) or "".join(
        traceback.format_exception(type(error), error, error.__traceback__))
    return FailedItem(index, reason, _bounded(tb_text, TRACEBACK_LIMIT), error)


def _single(chunk, k):
    return Chunk(first=chunk.first + k, items=[chunk.items[k]], locations=[chunk.locations[k]],
                 rngs=[chunk.rngs[k]])


# Characters kept of a failure's reason (one line) and of its traceback: an op may raise
# with a message of megabytes, and every failure is kept in memory and in the journal.
REASON_LIMIT = 500
TRACEBACK_LIMIT = 20_000


def one_line_reason(exc):
    """``"TypeName: first line of the message"``, the line cut to REASON_LIMIT characters."""
    # only the head of the message is looked at: it may be huge
    head = str(exc)[:REASON_LIMIT + 1].strip()
    line = head.splitlines()[0] if head else ""
    if len(line) > REASON_LIMIT:
        line = line[:REASON_LIMIT] + "... (cut)"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _bounded(text, limit):
    """``text``, or its start and its end (where the error is) when longer than ``limit``."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - limit} characters cut) ...\n{text[-half:]}"


def _span(indices):
    return f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"
