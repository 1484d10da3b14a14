"""Keeping a bounded number of chunks in flight and handing results back in input order."""

import collections
import logging
import time

from wfl_like.errors import WorkerDiedError

log = logging.getLogger("wfl_like.progress")

# Chunks queued per running slot: enough that no worker waits for the driver, few
# enough that a huge input never sits in memory at once.
IN_FLIGHT_PER_SLOT = 2


def run_in_order(submit, chunks, slots, op_name):
    """Submit chunks and yield ``(chunk, outputs)`` in input order.

    At most ``IN_FLIGHT_PER_SLOT * slots`` chunks are submitted and not yet handed
    back, so inputs are read only as fast as results are consumed.

    Raises
    ------
    WorkerDiedError
        A worker died running a chunk; the message names the items.
    Exception
        Whatever the operation raised, with a note naming the op and the items.
    """
    progress = _Progress(op_name)
    in_flight = collections.deque()
    limit = IN_FLIGHT_PER_SLOT * slots
    for chunk in chunks:
        in_flight.append((chunk, submit(chunk)))
        if len(in_flight) >= limit:
            yield _settle(*in_flight.popleft(), op_name, progress)
    while in_flight:
        yield _settle(*in_flight.popleft(), op_name, progress)
    progress.finish()


def _settle(chunk, future, op_name, progress):
    try:
        outputs = future.result()
    except WorkerDiedError as exc:
        raise WorkerDiedError(exc.exitcode, exc.pid, items=list(chunk.indices), op=op_name) from None
    except Exception as exc:
        _add_note(exc, f"raised by operation {op_name} on input items {_span(chunk.indices)}")
        raise
    progress.advance(len(chunk.items))
    return chunk, outputs


def _add_note(exc, note):
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:       # Python 3.10: kept where 3.11 keeps it, though tracebacks do not show it
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _span(indices):
    return f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"


class _Progress:
    """Logs how far an operation got: at most every ``interval`` seconds, and at the end."""

    def __init__(self, op_name, interval=10.0):
        self.op_name, self.interval = op_name, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s: %d items done, %.1f items/s", self.op_name, self.done, self.done / (now - self.start))

    def finish(self):
        elapsed = time.monotonic() - self.start
        log.info("%s: finished %d items in %.2f s", self.op_name, self.done, elapsed)
