"""Stopping a run on SIGINT and SIGTERM: cleanly when it can, by force when it cannot.

Under :func:`stop_on_signals`, the first SIGINT or SIGTERM raises an exception in the
main thread (:class:`KeyboardInterrupt` or :class:`Terminated`), so the run cleans up as
for any error: workers killed, partial output files removed, the journal kept for a
resume.  Two things can defeat that exception: C code that swallows it (numpy's
formatting, while extended XYZ is written, does), and its landing inside the internals
of a lock that another thread then waits for.  So the request is also remembered, and
checked again before every output is stored; and a watchdog thread finishes the stop by
force if the clean stop has not ended ``force_after`` seconds later, or at once on a
second signal: it kills the worker processes with their process groups (what the
operation started), removes the partial output files that
:class:`~wfl_like.configset.OutputSpec` was writing, and ends the process with
``128 + signal number``.  The journal is an SQLite database in
WAL mode, so nothing it has committed is lost either way; the rows it holds a moment while
results stream in are committed as soon as the call's storing stops, before its workers
are torn down (only a forced stop during that commit, or a SIGKILL, loses them).
"""

import contextlib
import multiprocessing
import os
import select
import signal
import threading

from wfl_like.io.partial import remove_partial_files

# Seconds a clean stop may take before it is finished by force: a scheduler's wall-time
# SIGTERM is typically followed by SIGKILL 30 s or more later, and users expect Ctrl-C to
# act within seconds.
FORCE_AFTER = 6.0


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that cleanup runs as for Ctrl-C."""


STOP_SIGNALS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}

# The StopOnSignals in force, if any: signal handlers belong to the whole process.
_active = None

def check_stop():
    """Raise the stop exception if a stop signal arrived under :func:`stop_on_signals`.

    Called before each output is stored, so that a stop whose exception was swallowed
    still ends the run before anything more is written.
    """
    stopper = _active
    if stopper is not None and stopper.received is not None:
        raise STOP_SIGNALS[stopper.received]()


def stop_requested():
    """Whether a stop signal arrived under :func:`stop_on_signals`."""
    stopper = _active
    return stopper is not None and stopper.received is not None


@contextlib.contextmanager
def stop_on_signals(*, force_after=FORCE_AFTER, prog="wfl_like"):
    """Stop the block on SIGINT or SIGTERM, and make sure the process ends soon after.

    Parameters
    ----------
    force_after : float
        Seconds the clean stop may take before the watchdog forces it.
    prog : str
        Name used in the one-line message printed when the stop is forced.

    Raises
    ------
    KeyboardInterrupt, Terminated
        In the block, on SIGINT or SIGTERM.
    RuntimeError
        Not called from the main thread.  Nested in another ``stop_on_signals``, the
        outer one stays in force.

    Examples
    --------
    In a batch job whose wall time ends with SIGTERM:

    >>> with stop_on_signals():                                  # doctest: +SKIP
    ...     calculate(inputs, outputs, calculator, autopara_info={"num_python_subprocesses": 8})
    """
    global _active
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("stop_on_signals() installs signal handlers, which only the main thread can do")
    if _active is not None:
        # already in force (a script that calls the command line's main()): the outer one acts
        yield _active
        return
    stopper = _StopOnSignals(force_after, prog)
    _active = stopper
    try:
        with stopper:
            yield stopper
    finally:
        _active = None


# What the main thread writes to the watchdog's pipe when the block ends; signal numbers
# are never 0.
_DONE = b"\0"


class _StopOnSignals:
    def __init__(self, force_after, prog):
        self.force_after, self.prog = force_after, prog
        self.received = None
        self._closing = False

    def __enter__(self):
        # The handler talks to the watchdog through a pipe: a write to it takes no lock,
        # so it is safe whatever the main thread was doing when the signal came.
        self._pid = os.getpid()
        self._read_fd, self._write_fd = os.pipe()
        self._watchdog = threading.Thread(target=self._watch, name="wfl_like-stop-watchdog", daemon=True)
        self._watchdog.start()
        self._previous = {}
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info):
        # a signal from here on finds the work done (or already stopping): it is not raised
        self._closing = True
        try:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        finally:
            # a byte rather than closing the pipe: processes forked in the block hold its
            # write end too, so the watchdog would never see end-of-file
            os.write(self._write_fd, _DONE)
            self._watchdog.join()
            os.close(self._write_fd)
            os.close(self._read_fd)

    def _on_signal(self, signum, frame):
        if os.getpid() != self._pid:
            # a process forked in the block (an executor's worker) inherited this handler:
            # the signal is for it, handled as it would have been without us
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        first = self.received is None
        if first:
            self.received = signum
        try:
            os.write(self._write_fd, bytes([signum]))
        except OSError:
            pass
        if first and not self._closing:
            raise STOP_SIGNALS[signum]()

    def _watch(self):
        if os.read(self._read_fd, 1) in (_DONE, b""):
            return                     # the block ended with no signal
        ready, _, _ = select.select([self._read_fd], [], [], self.force_after)
        if ready and os.read(self._read_fd, 1) in (_DONE, b""):
            return                     # the clean stop finished in time
        self._force(forced_by_signal=bool(ready))

    def _force(self, forced_by_signal):
        remove_partial_files()
        for child in _children():
            _kill_tree(child)
        why = "a second signal" if forced_by_signal else f"the clean stop took more than {self.force_after:g} s"
        name = signal.Signals(self.received).name
        # os.write, not print: the main thread may hold the lock of sys.stderr
        os.write(2, f"{self.prog}: stopped by {name}; after {why}, worker processes were killed and partial "
                    f"output files removed\n".encode())
        os._exit(128 + self.received)


def _kill_tree(pid):
    """SIGKILL a worker and its process group (what its operation started), or the process
    alone when it leads no group."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return
    except ProcessLookupError:
        pass
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _children():
    """Process ids of this process's multiprocessing children (the workers)."""
    for _ in range(3):
        try:
            return [child.pid for child in multiprocessing.active_children()]
        except RuntimeError:
            continue        # the set of children changed under us (a worker replaced): look again
    return []
