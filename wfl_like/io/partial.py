"""Partial output files: written under a hidden name, locked for as long as they are written.

An output's lock belongs to the output itself, not to the journal: the partial file is
opened (not truncated), locked, checked to still be the file its name points to, and
only then emptied.  Every writer of an output goes through it, with or without a
journal, so two runs never interleave in one file.  The lock is
:class:`wfl_like.io.locking.FileLock`, as for the journal.

This module also keeps the set of partial files being written, so that a forced stop
(:mod:`wfl_like.stopping`) can remove them.
"""

import contextlib
import io as _io
import logging
import os
from pathlib import Path

from wfl_like.errors import OutputLockedError, OutputWriteError
from wfl_like.io.locking import FileLock, Held, Moving

log = logging.getLogger(__name__)

# Partial output files being written by this process: a forced stop removes them.
_partial_files = set()


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
        self._lock = None
        self.published = False
        try:
            self._lock = FileLock(self.path)
        except Held as held:
            raise self._locked(held.holder) from None
        except Moving:
            raise OutputLockedError(f"output {str(self.final)!r}: its partial file {str(self.path)!r} kept "
                                    f"being replaced while this run tried to lock it; another run is "
                                    f"writing it") from None
        except OSError as exc:
            raise OutputWriteError.of(exc, self.final, "cannot create the partial file of output") from None
        os.ftruncate(self._lock.fd, 0)      # a stale partial of a killed run, or of the run before
        _partial_files.add(os.fspath(self.path))
        self.text = _io.open(self._lock.fd, "w", encoding="utf-8", closefd=False)

    def _locked(self, holder):
        return OutputLockedError(f"output {str(self.final)!r} is being written by another run ({holder}, "
                                 f"which holds the lock of its partial file {str(self.path)!r}); wait for "
                                 f"that run to finish, or stop it, before running again")

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
            os.fsync(self._lock.fd)
        except OSError as exc:
            raise OutputWriteError.of(exc, self.final, "could not write output file") from None
        if not self.final.parent.is_dir():
            raise OutputWriteError(f"output {str(self.final)!r} was not published: its directory "
                                   f"{str(self.final.parent)!r} was removed while this run wrote it (with the "
                                   f"journal, if it was kept there); run again to write the output",
                                   filename=self.final)
        if not self._lock.names_path():
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
        if self._lock is None or self._lock.fd is None:
            return
        if not self.published and self._lock.names_path():
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
        lock = getattr(self, "_lock", None)
        if lock is not None and lock.fd is not None:
            self._release()

    def _release(self):
        with contextlib.suppress(OSError):
            self.text.close()
        self._lock.release()
        _partial_files.discard(os.fspath(self.path))


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
