"""The journal: every finished item of a run, persisted the moment it is done.

An SQLite database in WAL mode beside the first output file, written by the driver
alone (workers never see it).  A rerun of the same call reads it back: items whose
cache key matches are not computed again, so a run killed at any moment resumes where
it stopped, and a run whose operation, arguments or inputs changed recomputes exactly
what changed.
"""

import json
import os
import pickle
import socket
import sqlite3
import threading
import time
from pathlib import Path

from wfl_like.errors import OutputLockedError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    idx INTEGER PRIMARY KEY,      -- position of the item in the input
    key TEXT NOT NULL,            -- cache key: operation, arguments, item content, random stream
    status TEXT NOT NULL,         -- 'done' or 'failed'
    output BLOB,                  -- pickled output of a done item
    reason TEXT,                  -- one line, for a failed item
    traceback TEXT
);
"""

DONE, FAILED = "done", "failed"


def journal_path(output_path):
    """Where the journal of an output lives: a hidden file beside it."""
    output_path = Path(output_path)
    return output_path.with_name(f".{output_path.name}.journal.sqlite")


class Journal:
    """Read and write the journal of one output.

    Parameters
    ----------
    path : str or Path
        The database file (see :func:`journal_path`).
    read_only : bool, default False
        Open to read only, as ``wfl-like status`` does beside a running writer: no
        lock, no schema set-up, no change to the data (SQLite may still create its
        ``-wal``/``-shm`` companions).  Otherwise the output's lock is
        taken, so a second run on the same output fails at once with
        :class:`~wfl_like.errors.OutputLockedError` instead of interleaving with this one.
    """

    def __init__(self, path, read_only=False):
        self.path = Path(path)
        self._lock = None
        if read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            return
        self._lock = _OutputLock(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a committed item survives the process being
            # killed at any moment (only a power loss may lose the last transactions)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self.close()
            raise

    # --- the call -----------------------------------------------------------------------

    def meta(self, key, default=None):
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, **values):
        with self._transaction():
            for key, value in values.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def start(self, call_key, description):
        """Begin a run of the call ``call_key``.

        Returns
        -------
        str or None
            Why earlier results were dropped (the call changed), or None when they stand.
        """
        previous = self.meta("call_key")
        reason = None
        if previous is not None and previous != call_key:
            reason = "the operation's code or its arguments changed"
            self.clear()
        self.set_meta(call_key=call_key, call=description, complete=False, started=time.time(),
                      pid=os.getpid(), host=socket.gethostname())
        return reason

    def clear(self):
        """Forget every item (``overwrite=True``, or the call changed)."""
        with self._transaction():
            self._db.execute("DELETE FROM items")
            self._db.execute("DELETE FROM meta")

    # --- items --------------------------------------------------------------------------

    def lookup(self, index, key):
        """``(found, output, stored_key)`` for item ``index``.

        ``found`` is true when the item was done with this very key.  A failed item is
        never reused: it is computed again.  ``stored_key`` is the key on record for
        that position (None if there is none), to tell a changed item from a new one.
        """
        row = self._db.execute("SELECT key, status, output FROM items WHERE idx=?", (index,)).fetchone()
        if row is None:
            return False, None, None
        stored_key, status, output = row
        if stored_key == key and status == DONE:
            return True, pickle.loads(output), stored_key
        return False, None, stored_key

    def record(self, done, failed):
        """Persist finished items in one transaction.

        Parameters
        ----------
        done : list of (index, key, output)
        failed : list of (index, key, FailedItem)
        """
        if not done and not failed:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, NULL, NULL)",
                [(index, key, DONE, pickle.dumps(output, pickle.HIGHEST_PROTOCOL)) for index, key, output in done])
            self._db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, NULL, ?, ?)",
                [(index, key, FAILED, item.reason, item.traceback) for index, key, item in failed])

    def forget_beyond(self, n_items):
        """Drop items at positions ``>= n_items`` (the input became shorter)."""
        with self._transaction():
            self._db.execute("DELETE FROM items WHERE idx >= ?", (n_items,))

    def counts(self):
        """``{"done": n, "failed": m}``."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {DONE: counts.get(DONE, 0), FAILED: counts.get(FAILED, 0)}

    def failures(self, limit=None):
        """``[(index, reason), ...]`` of the failed items, in input order."""
        sql = "SELECT idx, reason FROM items WHERE status=? ORDER BY idx"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._db.execute(sql, (FAILED,)).fetchall()

    # --- plumbing -----------------------------------------------------------------------

    def _transaction(self):
        return _Transaction(self._db)

    def close(self):
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# Outputs held by this process: POSIX record locks do not exclude the process itself.
_held = set()
_held_guard = threading.Lock()


class _OutputLock:
    """An exclusive lock on one output, against other processes and this one."""

    def __init__(self, journal):
        import fcntl

        self.key = str(journal.resolve())
        with _held_guard:
            if self.key in _held:
                raise _locked(journal)
            _held.add(self.key)
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            # A POSIX record lock (lockf) belongs to this process alone: worker processes
            # forked during the run (ours, or those of an executor the caller keeps) do not
            # inherit it, and it goes with the process however that ends.  A file of its
            # own keeps it apart from SQLite's record locks on the database.
            self.file = open(journal.with_name(journal.name + ".lock"), "ab")
            try:
                fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.close()
                raise _locked(journal) from None
        except BaseException:
            with _held_guard:
                _held.discard(self.key)
            raise

    def close(self):
        self.file.close()      # closing the descriptor releases the lock
        with _held_guard:
            _held.discard(self.key)


def _locked(journal):
    output = journal.with_name(journal.name[1:].removesuffix(".journal.sqlite"))
    return OutputLockedError(f"output {str(output)!r} is being written by {_holder(journal)}; wait for it "
                             f"to finish (or stop it) before running again")


def _holder(journal):
    """Who holds the lock, as the journal records it."""
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as db:
            rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('pid', 'host')").fetchall())
        return f"process {json.loads(rows['pid'])} on {json.loads(rows['host'])}"
    except (sqlite3.Error, KeyError, ValueError):
        return "another process"
