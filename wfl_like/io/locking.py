"""Exclusive locks on files, against other processes and against this one.

One mechanism for every lock of a run: the partial file of each output, and the
``.lock`` file beside a journal.  A lock is a POSIX record lock (``lockf``) on the file
opened without truncating it: it belongs to this process alone (worker processes forked
during the run do not inherit it) and goes with the process however that ends.  Since
such locks do not exclude their own process, an in-process registry of the files held,
by device and inode, does that.  A lock counts only while the path still names the very
file locked: a holder may remove or replace that file, and a lock on a file no longer at
the path protects nothing, so it is taken again.
"""

import contextlib
import fcntl
import os
import struct
import sys
import threading

# (device, inode) of the files this process holds, and the guard that makes "look, open,
# lock, register" one step between threads.
_held = set()
_held_guard = threading.RLock()      # re-entrant: a __del__ may release while it is held

# Times the open-and-lock is tried again when the name moved to another file in between
# (another holder removing or publishing it at that very moment).
ATTEMPTS = 50


class Held(Exception):
    """The file is locked by another holder; ``holder`` says who (``"process 1234"``)."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


class Moving(Exception):
    """The path kept naming another file while the lock was being taken."""


def identity(stat):
    """``(device, inode)`` of an ``os.stat`` result."""
    return stat.st_dev, stat.st_ino


class FileLock:
    """An exclusive lock on the file at ``path``, created if need be and never truncated.

    Parameters
    ----------
    path : str or Path

    Raises
    ------
    Held
        Another process, or another holder in this one, has the lock.
    Moving
        The path kept naming another file (``ATTEMPTS`` times).
    OSError
        The file cannot be created or opened.
    """

    def __init__(self, path):
        self.path = path
        self.fd = None
        for _ in range(ATTEMPTS):
            if self._try():
                return
        raise Moving(str(path))

    def _try(self):
        with _held_guard:
            # look before opening: closing a descriptor of a file this process has locked
            # would release that lock
            with contextlib.suppress(FileNotFoundError):
                if identity(os.stat(self.path)) in _held:
                    raise Held("this process")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            locked = lock_opened(fd, self.path)
            if locked is None:
                os.close(fd)
                return False
            self.fd, self.identity = fd, locked
            _held.add(locked)
            return True

    def names_path(self):
        """Whether the path still names the file this lock holds."""
        try:
            return identity(os.stat(self.path)) == self.identity
        except FileNotFoundError:
            return False

    def release(self, remove=False):
        """Give the lock up; with ``remove``, first delete the file while it is still this one's
        (before the lock goes, so that a process that opened it meanwhile finds, once it has
        the lock, that the path names no file)."""
        with _held_guard:
            if self.fd is None:
                return
            if remove and self.names_path():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self.fd)          # closing the descriptor releases the lock
            self.fd = None
            _held.discard(self.identity)


def lock_opened(fd, path):
    """Lock the open file ``fd``; its identity when ``path`` still names it, else None.

    Raises
    ------
    Held
        Another holder has the lock (``fd`` is then closed).
    """
    locked = identity(os.fstat(fd))
    with _held_guard:
        if locked in _held:
            os.close(fd)
            raise Held("this process")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise Held(holder) from None
    try:
        named = identity(os.stat(path))
    except FileNotFoundError:
        return None
    return locked if named == locked else None


def _lock_holder(fd):
    """``"process 1234"`` holding the lock of ``fd``, where the system says (Linux), else ``"another process"``."""
    if not sys.platform.startswith("linux"):
        return "another process"
    # struct flock of Linux: l_type, l_whence, l_start, l_len, l_pid
    layout = "@hhqqi"
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        lock_type, _, _, _, pid = struct.unpack(layout, answer)
    except (OSError, struct.error):
        return "another process"
    return f"process {pid}" if lock_type != fcntl.F_UNLCK and pid > 0 else "another process"
