"""Python's cyclic garbage collector paused while the driver gathers the outputs of its workers.

A driver whose workers compute creates the outputs (tens of Python objects per structure)
and keeps them: none of them is garbage, yet every so many allocations the collector
walks all of them, and everything else the process holds (the inputs among it), once
more.  On cheap operations that walk was a third of the driver's time.  So a call
whose operation runs in other processes pauses the collector until it returns; reference
counting frees the driver's garbage as usual meanwhile.  A serial call does not: the
operation runs in the driver and may leave garbage that only the collector finds.

Pauses nest and overlap (calls in several threads): the collector resumes when the last
one ends, and only if it was running when the first began.  A process forked while
paused (a worker) starts with the collector as it was before the pause.
"""

import contextlib
import gc
import os
import threading

_lock = threading.Lock()
_depth = 0              # pauses in force
_was_enabled = False    # whether the collector ran before the first of them
_fork_hook_set = False


@contextlib.contextmanager
def collector_paused():
    """Pause the cyclic garbage collector for the ``with`` block (see the module's notes)."""
    global _depth, _was_enabled, _fork_hook_set
    with _lock:
        if not _fork_hook_set:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_set = True
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def _after_fork_in_child():
    global _depth, _lock
    if _depth and _was_enabled:
        gc.enable()
    _depth = 0
    # another thread may have held it at the fork: the child's own starts free
    _lock = threading.Lock()
