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
    items : list of int, optional
        Input indices of the items the worker was running.
    op : str, optional
        Name of the operation.
    """

    def __init__(self, exitcode=None, pid=None, items=None, op=None):
        self.exitcode, self.pid, self.items, self.op = exitcode, pid, items, op
        message = f"worker process{'' if pid is None else f' (pid {pid})'} died with {describe_exitcode(exitcode)}"
        if items is not None:
            message += f" while running input item(s) {items}"
        if op is not None:
            message += f" of operation {op}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.exitcode, self.pid, self.items, self.op))


class WorkerInitializerError(RuntimeError):
    """The per-worker initializer raised, so no worker could start."""


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
