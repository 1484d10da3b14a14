"""Partial output files: written under a hidden name, locked for as long as they are written.

An output's lock belongs to the output itself, not to the journal: the partial file is
opened (not truncated), locked, checked to still be the file its name points to, and
only then emptied.  Every writer of an output goes through it, with or without a
journal, so two runs never interleave in one file.  The lock is a POSIX record lock
(``lockf``), which goes with the process however that ends and is not inherited by
forked workers; since such locks do not exclude their own process, an in-process
registry of the files held (by device and inode) does that.

This module also keeps the set of partial files being written, so that a forced stop
(:mod:`wfl_like.stopping`) can remove them.
"""

import contextlib
import fcntl
import io as _io
import logging
import os
import struct
import sys
import threading
from pathlib import Path

from wfl_like.errors import OutputLockedError, OutputWriteError

log = logging.getLogger(__name__)

# Partial output files being written by this process: a forced stop removes them.
_partial_files = set()

# (device, inode) of the partial files this process holds, and the guard that makes
# "look, open, lock, register" one step between threads.
_held = set()
_held_guard = threading.RLock()      # re-entrant: __del__ may run while it is held

# Times the open-and-lock is tried again when the name was moved to another file in
# between (another writer publishing at that very moment).
_ATTEMPTS = 5


def partial_path(path):
    """Where a file is written before it is complete.

    Hidden, in the same directory (so the final rename is atomic), and named after the
    final file so that a user who looks sees what it is.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def remove_partial_files():
    """Remove every partial file this process is writing (for a forced stop: takes no lock)."""
    for _ in range(3):
        try:
            paths = list(_partial_files)
            break
        except RuntimeError:
            continue        # the main thread changed the set meanwhile: look again
    else:
        return
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _identity(stat):
    return stat.st_dev, stat.st_ino


class PartialFile:
    """The locked partial file of one output, from the start of a run to its publication.

    Parameters
    ----------
    final : Path
        The output's final path; the partial file is :func:`partial_path` of it.

    Raises
    ------
    OutputLockedError
        Another writer (in this process or another) holds the output.
    OutputWriteError
        The partial file cannot be created.
    """

    def __init__(self, final):
        self.final = Path(final)
        self.path = partial_path(self.final)
        self._fd = None
        self.published = False
        for _ in range(_ATTEMPTS):
            if self._try_lock():
                break
        else:
            raise OutputLockedError(f"output {str(self.final)!r}: its partial file {str(self.path)!r} kept "
                                    f"being replaced while this run tried to lock it; another run is "
                                    f"writing it")
        self.text = _io.open(self._fd, "w", encoding="utf-8", closefd=False)

    def _try_lock(self):
        """Open, lock and empty the partial file; False when its name moved on meanwhile."""
        with _held_guard:
            # Look before opening: closing a descriptor of a file that this process has
            # locked would release that lock.
            with contextlib.suppress(FileNotFoundError):
                if _identity(os.stat(self.path)) in _held:
                    raise self._locked()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise OutputWriteError.of(exc, self.final, "cannot create the partial file of output") from None
            identity = _identity(os.fstat(fd))
            if identity in _held:
                os.close(fd)
                raise self._locked()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise self._locked(holder) from None
            if not self._names(identity):
                os.close(fd)
                return False
            os.ftruncate(fd, 0)      # a stale partial of a killed run, or of the run before
            self._fd, self._identity = fd, identity
            _held.add(identity)
            _partial_files.add(os.fspath(self.path))
            return True

    def _locked(self, holder="this process"):
        return OutputLockedError(f"output {str(self.final)!r} is being written by another run ({holder}, "
                                 f"which holds the lock of its partial file {str(self.path)!r}); wait for "
                                 f"that run to finish, or stop it, before running again")

    def _names(self, identity):
        """Whether the partial path still names the file this writer holds."""
        try:
            return _identity(os.stat(self.path)) == identity
        except FileNotFoundError:
            return False

    def write(self, text, flush):
        """Append ``text``; an OSError (disk full, ...) becomes an OutputWriteError naming the file."""
        try:
            self.text.write(text)
            if flush:
                self.text.flush()
        except OSError as exc:
            raise OutputWriteError.of(exc, self.final, "could not write output file") from None

    def publish(self):
        """Move the complete file to its final path, durably, and release it.

        Raises
        ------
        OutputWriteError
            The data cannot be flushed, or the partial file was removed or replaced
            while the run held it (nothing is published then).
        """
        try:
            self.text.flush()
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputWriteError.of(exc, self.final, "could not write output file") from None
        if not self.final.parent.is_dir():
            raise OutputWriteError(f"output {str(self.final)!r} was not published: its directory "
                                   f"{str(self.final.parent)!r} was removed while this run wrote it (with the "
                                   f"journal, if it was kept there); run again to write the output",
                                   filename=self.final)
        if not self._names(self._identity):
            raise OutputWriteError(f"output {str(self.final)!r} was not published: its partial file "
                                   f"{str(self.path)!r} was removed or replaced while this run wrote it (is "
                                   f"another run, or a clean-up, at work in {str(self.final.parent)!r}?); "
                                   f"the journal keeps the computed items, run again to write the output",
                                   filename=self.final)
        log.debug("publishing %s", self.final)
        try:
            os.replace(self.path, self.final)
            self.published = True
            _fsync_directory(self.final.parent)
        except OSError as exc:
            raise OutputWriteError.of(exc, self.final, "could not move the complete output into place") from None
        self._release()
        log.debug("published %s", self.final)

    def discard(self):
        """Remove the partial file (if it is still this writer's) and release it."""
        if self._fd is None:
            return
        if not self.published and self._names(self._identity):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # a file system turned read-only: say where the debris is
                log.warning("could not remove the partial file %s of output %s (%s); remove it by hand",
                            self.path, self.final, exc.strerror)
        self._release()

    def __del__(self):
        # an OutputSpec dropped without close() or discard(): nobody can write this file
        # any more, so its lock goes (the partial file stays, as after a kill)
        if getattr(self, "_fd", None) is not None:
            self._release()

    def _release(self):
        with contextlib.suppress(OSError):
            self.text.close()
        with _held_guard:
            os.close(self._fd)       # closing the descriptor releases the lock
            self._fd = None
            _held.discard(self._identity)
            _partial_files.discard(os.fspath(self.path))


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


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
