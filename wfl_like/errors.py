"""Exceptions that users of wfl_like catch.

Every class here derives from the built-in exception that fits, so code that
catches ``RuntimeError`` or ``ValueError`` keeps working.
"""

import signal


class WorkerDiedError(RuntimeError):
    """A worker process ended while it was running a task.

    Parameters
    ----------
    exitcode : int or None
        Exit code of the process as :class:`multiprocessing.Process` reports it:
        negative for a signal, ``None`` when unknown.
    pid : int or None
        Process id of the dead worker.
    """

    def __init__(self, exitcode=None, pid=None):
        self.exitcode, self.pid = exitcode, pid
        super().__init__(f"worker process{'' if pid is None else f' (pid {pid})'} died with "
                         f"{describe_exitcode(exitcode)}")

    def __reduce__(self):
        return (type(self), (self.exitcode, self.pid))

    def describe(self):
        """The exit code or signal in words."""
        return describe_exitcode(self.exitcode)


class WorkerInitializerError(RuntimeError):
    """The per-worker initializer raised, killed its worker, or ran past
    ``initializer_timeout``, so no worker could start."""


class OpOutputError(ValueError):
    """An operation returned something that cannot be matched to its inputs."""


def describe_exitcode(exitcode):
    """Say in words what an exit code means and what probably caused it.

    Parameters
    ----------
    exitcode : int or None
        Negative values are signal numbers, as in :attr:`multiprocessing.Process.exitcode`.

    Returns
    -------
    str
    """
    if exitcode is None:
        return "an unknown exit status"
    if exitcode >= 0:
        return f"exit code {exitcode} (the operation or a library it uses called exit)"
    signum = -exitcode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown signal"
    hint = {
        signal.SIGKILL: "killed from outside, often by the out-of-memory killer or the batch scheduler",
        signal.SIGSEGV: "a segmentation fault, usually a crash in compiled code of the calculator",
        signal.SIGBUS: "a bus error, usually a crash in compiled code of the calculator",
        signal.SIGABRT: "an abort, usually a failed check in compiled code of the calculator",
        signal.SIGTERM: "asked to terminate from outside",
    }.get(signum, "a signal from outside or from compiled code")
    return f"signal {signum} ({name}: {hint})"


class InputFileError(ValueError):
    """An input file is missing, empty of matches, or cannot be parsed."""


class TaskTimeoutError(TimeoutError):
    """A task ran past its time limit; its worker was killed.

    Parameters
    ----------
    timeout : float
        The limit, in seconds.
    pid : int or None
        Process id of the worker that was killed.
    """

    def __init__(self, timeout, pid=None):
        self.timeout, self.pid = timeout, pid
        super().__init__(f"timed out after {timeout:g} s (worker{'' if pid is None else f' pid {pid}'} killed)")

    def __reduce__(self):
        return (type(self), (self.timeout, self.pid))


class FailedItem:
    """What went wrong with one input item.

    Attributes
    ----------
    index : int
        Position of the item in the input.
    reason : str
        One line: the exception type and message, ``worker died (...)`` or ``timed out after T s``.
    traceback : str
        The worker's traceback text, when there is one.
    exception : BaseException or None
        The exception itself (the op's own, or WorkerDiedError / TaskTimeoutError).
    """

    __slots__ = ("index", "reason", "traceback", "exception")

    def __init__(self, index, reason, traceback="", exception=None):
        self.index, self.reason, self.traceback = index, reason, traceback
        self.exception = exception

    def __repr__(self):
        return f"FailedItem(index={self.index}, reason={self.reason!r})"

    def __eq__(self, other):
        return isinstance(other, FailedItem) and (self.index, self.reason) == (other.index, other.reason)


def describe_failures(failures, limit=20):
    """``"item 3: ValueError: ...; item 7: worker died ..."``, at most ``limit`` of them."""
    text = "; ".join(f"item {f.index}: {f.reason}" for f in failures[:limit])
    if len(failures) > limit:
        text += f"; and {len(failures) - limit} more"
    return text


class AutoparallelizeError(RuntimeError):
    """Some input items failed; every other item was completed.

    Attributes
    ----------
    failures : list of FailedItem
        One record per failed item, in input order.
    stopped_early : bool
        The run was stopped because its first items all failed with the same error.
    """

    def __init__(self, op, failures, stopped_early=False):
        self.op, self.failures, self.stopped_early = op, list(failures), stopped_early
        if stopped_early:
            message = (f"operation {op} failed on each of the first {len(self.failures)} input items with "
                       f"the same error, so the run was stopped (likely a problem with the setup, not "
                       f"the items): {self.failures[0].reason}; if these items really fail, pass "
                       f"autopara_info={{'fail_fast': False}} to go through every item")
        else:
            message = (f"operation {op} failed on {len(self.failures)} input items (every other item "
                       f"was completed): {describe_failures(self.failures)}")
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.op, self.failures, self.stopped_early))


class FailedItemsWarning(UserWarning):
    """Some input items failed and were left out of the outputs (``errors="skip"``).

    Attributes
    ----------
    failures : list of FailedItem
    """

    def __init__(self, op, failures):
        self.failures = list(failures)
        super().__init__(f"operation {op} failed on {len(self.failures)} input items, left out of the "
                         f"outputs: {describe_failures(self.failures)}")


class OutputLockedError(RuntimeError):
    """Another run is writing the same output; the message names the output and that process."""


# --- the journal and the cache --------------------------------------------------------

class JournalError(ValueError):
    """A run's journal cannot be used: not an SQLite database, a foreign schema, or a
    malformed value.  The message names the journal file; ``overwrite=True``
    (``--overwrite``) discards it without reading it."""


# --- outputs --------------------------------------------------------------------------


class OutputIsInputError(ValueError):
    """An output file is also an input (the same path, or a link to it): writing it would
    destroy the input.  Found before any work."""


class OutputWriteError(OSError):
    """An output file could not be written or published (disk full, read-only, removed).

    The partial files of the output are removed; what was computed stays in the journal,
    so a rerun after the cause is fixed computes only the rest.

    Attributes
    ----------
    filename : str
        The output file.
    errno : int or None
        The errno of the underlying OSError, when there was one.
    """

    def __init__(self, message, filename=None, errno=None):
        super().__init__(message)
        self.message = message
        self.filename = None if filename is None else str(filename)
        self.errno = errno

    def __str__(self):
        # OSError's own would show "[Errno N] strerror: filename" once those are set
        return self.message

    def __reduce__(self):
        return (type(self), (str(self), self.filename, self.errno))

    @classmethod
    def of(cls, exc, final, what):
        """From an OSError met while writing output ``final``: ``what`` went wrong, and why."""
        why = exc.strerror or str(exc)
        return cls(f"{what} {str(final)!r}: {why}; its partial files are removed, and the journal (if any) "
                   f"keeps the computed items, so a rerun after fixing this computes only the rest",
                   filename=final, errno=exc.errno)


class OutputFormatError(OpOutputError):
    """An output that the format of its file cannot hold, or that would not read back from it
    (a key that is not a string, a line break inside a value, ...); the message names the key."""


# --- worker processes -----------------------------------------------------------------


class ItemAbortedError(RuntimeError):
    """The operation raised a :class:`BaseException` that is not an :class:`Exception`
    (``KeyboardInterrupt``, ``GeneratorExit``, one of its own) in a worker process.

    Only a signal to the driver stops a run; in a worker such an exception is the
    failure of the item that raised it.  The message starts with the original type's name.
    """


class WorkerPoisonedError(RuntimeError):
    """An item failed in a way that leaves its worker unusable (``MemoryError``, or "too
    many open files" anywhere in the exception's chain), so the worker was replaced.

    The item is tried again like a dead worker's item; if it keeps failing, it fails
    with the original exception, :attr:`error`.

    Parameters
    ----------
    error : BaseException
        What the operation raised.
    """

    def __init__(self, error):
        self.error = error
        super().__init__(f"{type(error).__name__}: {error} (the worker was replaced: it may have run out of "
                         f"memory or of file descriptors)")

    def __reduce__(self):
        return (type(self), (self.error,))


# --- queued jobs ------------------------------------------------------------------------


class SlurmError(RuntimeError):
    """A Slurm command (``sbatch``, ``squeue``, ``scontrol``, ``scancel``) is missing or failed;
    the message gives the command and what it wrote on stderr."""


class QueuedJobsTimeout(TimeoutError):
    """The driver waited ``remote_info["timeout"]`` seconds and some queued jobs had not finished.

    The jobs are left queued, and what came back is journaled: rerun the same call to
    collect them (``scancel`` the jobs named to give up on them)."""
