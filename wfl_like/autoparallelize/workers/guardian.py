"""A small process that kills a pool's worker process groups when the driver is gone.

Each pool worker leads a process group of its own, so that whatever the operation
starts (a DFT binary under :mod:`subprocess`) can be killed with it.  The driver kills
those groups itself whenever a worker ends; but a driver killed by SIGKILL, or ended by
a signal's default action, runs no code at all.  The guardian covers that case: it
holds the read end of a pipe whose only writer is the driver, learns the group ids
over it, and on end-of-file (the driver exited, however it did) kills every group it
still knows, then exits.  It ignores SIGINT and SIGTERM and sits in a session of its
own, so that what ends the driver (Ctrl-C, a scheduler's signal to the job's process
group) does not end it first.

Out of reach: a process that leaves its worker's group itself (``setsid``,
``subprocess.Popen(..., start_new_session=True)``), and processes forked by the driver
outside wfl_like that inherit the pipe (the guardian then waits for them too).
"""

import logging
import os
import signal
import subprocess
import sys

from wfl_like.autoparallelize.workers.starting import START_LOCK

log = logging.getLogger(__name__)

# Run with -I -S: no site-packages, no user paths, no PYTHON* variables, so the guardian
# starts fast and runs nothing but this.  "+N" adds group N, "-N" forgets it.
_GUARDIAN_CODE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups = set()
for line in sys.stdin.buffer:
    try:
        sign, pgid = line[:1], int(line[1:])
    except ValueError:
        continue
    if sign == b"+":
        groups.add(pgid)
    elif sign == b"-":
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def kill_process_group(pid, alone_too=True):
    """SIGKILL the process group led by ``pid``, or (``alone_too``) the process alone when it
    leads none.  Leave ``alone_too`` off for a process that may already have been reaped:
    its pid may belong to another process by now, whereas a group id stays reserved while
    the group has members."""
    try:
        os.killpg(pid, signal.SIGKILL)
        return
    except ProcessLookupError:
        if not alone_too:
            return
        # not (yet) a group leader: it may not have called setsid yet
    except PermissionError:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Guardian:
    """The driver's handle on a guardian process (see the module docstring).

    A guardian that cannot be started is logged and done without: the driver still
    kills worker groups itself whenever it can run code.
    """

    def __init__(self):
        try:
            with START_LOCK:
                self._process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARDIAN_CODE],
                                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 start_new_session=True)
        except OSError as exc:
            log.warning("could not start the process that ends worker process groups if the driver dies "
                        "(%s); programs started by the operation may outlive a killed driver", exc)
            self._process = None

    @property
    def fileno(self):
        """The driver's end of the pipe, which forked workers must close; None without a guardian."""
        return None if self._process is None else self._process.stdin.fileno()

    def watch(self, pgid):
        """Have the guardian kill group ``pgid`` if the driver goes."""
        self._tell(f"+{pgid}\n")

    def forget(self, pgid):
        """Group ``pgid`` is gone (killed by the driver): its id may be reused, so it must not be killed."""
        self._tell(f"-{pgid}\n")

    def _tell(self, line):
        if self._process is None:
            return
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
        except (OSError, ValueError):
            pass        # the guardian is gone: nothing more it can do

    def close(self):
        """End the guardian (it kills the groups it still knows) and reap it."""
        if self._process is None:
            return
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._process = None
