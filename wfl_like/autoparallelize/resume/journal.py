"""The journal: every finished item of a run, persisted within a fraction of a second.

An SQLite database in WAL mode beside the first output file, written by the driver
alone (workers never see it).  A rerun of the same call reads it back: items whose
cache key is on record are not computed again, so a run killed at any moment resumes
where it stopped, and a run whose operation, arguments or inputs changed recomputes
exactly what changed.  Items are found by their key, not their position: inserting a
structure at the start of an input computes that one only.

While results stream in from worker processes or MPI ranks (:attr:`Journal.hold`), rows
are held briefly and committed together: a commit costs about a millisecond whatever it
holds (the random keys touch pages all over the key index), so one per chunk of a cheap
operation cost more than the rest of the journal.  Held rows are committed as soon as
the driver would wait more than :data:`HOLD_WHILE_WAITING` for the next result (so the
result of an expensive item is committed at once); once they are :data:`HOLD_SECONDS`
old, or :data:`HOLD_ITEMS` items or :data:`HOLD_BYTES` bytes; when a run starts,
completes or stops (an error, Ctrl-C, SIGTERM); and before the items are counted or
listed.  The outputs of held rows are written to their files only after the rows are
committed.  Lookups do not see rows held: an item met again before its row is committed
is computed again, as one still running is.  A process killed outright (SIGKILL, a
crash) loses at most the results of its last :data:`HOLD_SECONDS`, which a rerun
computes again.

A journal may have been written or edited by anyone, so everything read from it is
checked: outputs are stored as the text of their output file or in
:mod:`~wfl_like.autoparallelize.resume.codec`'s format (data only, never code; see
:mod:`~wfl_like.autoparallelize.resume.stored`), and a database that is not a journal of
this format raises :class:`~wfl_like.errors.JournalError` naming the file.
"""

import contextlib
import errno
import json
import logging
import os
import socket
import sqlite3
import time
from pathlib import Path

from wfl_like.autoparallelize.resume import stored as stored_form
from wfl_like.autoparallelize.supervisor import REASON_LIMIT
from wfl_like.errors import JournalError, OutputLockedError, OutputWriteError
from wfl_like.io.locking import FileLock, Held, Moving

log = logging.getLogger("wfl_like.cache")

# Bump when the tables or the way outputs are stored change.
FORMAT = 4

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    key TEXT PRIMARY KEY,         -- cache key: operation, arguments, item content, random stream
    idx INTEGER NOT NULL,         -- position of the item in the input of the run that last met it
    run INTEGER NOT NULL,         -- that run's number
    status TEXT NOT NULL,         -- 'done' or 'failed'
    form TEXT,                    -- how a done item's output is kept: 'codec', 'text' or 'zlib'
    output,                       -- the codec's JSON, or the output file's text (UTF-8, maybe compressed)
    file_i INTEGER,               -- for text: the output file it goes to,
    count INTEGER,                -- the structures it holds,
    size INTEGER,                 -- and its length in bytes,
    loc TEXT,                     -- and the input location it was rendered at (' / 5'): moved if reused elsewhere
    reason TEXT,                  -- one line, for a failed item
    traceback TEXT
);
CREATE INDEX items_by_idx ON items (idx);
"""
_TABLES = {"meta": ("key", "value"),
           "items": ("key", "idx", "run", "status", "form", "output", "file_i", "count", "size", "loc", "reason",
                     "traceback")}
# Older formats are never read, only started afresh: format 1 stored pickled outputs,
# format 2 every output in the codec's format, format 3 texts keyed by their location.
_OLDER_TABLES = {
    1: {"meta": ("key", "value"), "items": ("idx", "key", "status", "output", "reason", "traceback")},
    2: {"meta": ("key", "value"), "items": ("key", "idx", "run", "status", "output", "reason", "traceback")},
    3: {"meta": ("key", "value"), "items": ("key", "idx", "run", "status", "form", "output", "file_i", "count",
                                            "size", "reason", "traceback")},
}

DONE, FAILED = "done", "failed"

_PAGE_SIZE = 16384

# what each meta value must be; a journal holding anything else is malformed
_META_TYPES = {"format": int, "call_key": str, "call": dict, "complete": bool, "started": (int, float),
               "pid": int, "host": str, "run": int, "n_items": int, "failed": int,
               "inputs": (str, type(None)), "outputs": (list, type(None)), "writer": str, "rng": str}

# Counts and numbers of the record (runs, items, pids) lie in 0.._LARGEST_COUNT: SQLite
# integers are 64-bit, and a run number is incremented.
_LARGEST_COUNT = 2 ** 62

# Keys asked for in one query: well below SQLite's oldest limit on a statement's parameters (999).
_KEYS_PER_QUERY = 500

# Held rows are committed once the oldest is this many seconds old, or there are this many
# items or bytes of outputs held, or the next result is this many seconds away (see the
# module's docstring).
HOLD_SECONDS = 0.25
HOLD_WHILE_WAITING = 0.02
HOLD_ITEMS = 1000
HOLD_BYTES = 16 * 2**20

_RECOVER = "pass overwrite=True (wfl-like --overwrite) to discard it and start afresh"


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
    fresh : bool, default False
        Delete the journal, unread, and start a new one (``overwrite=True``): whatever
        the file holds, this recovers.

    Raises
    ------
    JournalError
        The file is not a journal of this format (not SQLite, another schema, a
        malformed value).
    PermissionError
        The journal, or its directory, cannot be written.
    """

    def __init__(self, path, read_only=False, fresh=False):
        self.path = Path(path)
        self._lock = self._db = None
        self.empty = self.read_only = False
        self._holds_items = True      # whether a miss may be a changed item (set by start())
        self.hold = False             # whether rows may be held (set by the run: results stream in)
        self._held = []               # (done rows, failed rows, met rows) recorded, not committed yet
        self._held_items = self._held_bytes = 0
        self._held_since = None       # when the oldest of them was recorded (time.monotonic())
        try:
            if read_only:
                self._open_read_only()
            else:
                self._lock = _OutputLock(self.path)
                if fresh:
                    _remove_database(self.path)
                self._open_for_writing()
        except BaseException:
            self.close()
            raise

    def _open_read_only(self):
        if not self.path.exists():
            raise FileNotFoundError(f"no journal {str(self.path)!r}")
        if not os.access(self.path, os.R_OK):
            raise PermissionError(f"cannot read the journal {str(self.path)!r}: permission denied")
        self.read_only = True
        mode = _read_only_mode(self.path)
        source = self.path
        if "immutable" in mode and self.path.with_name(self.path.name + "-wal").exists():
            # read as immutable, SQLite ignores the write-ahead log, which holds what a run
            # killed before its end committed last: read a copy of both instead
            source = self._copy_aside()
            mode = "mode=ro"
        with self._guard():
            self._db = sqlite3.connect(f"{source.resolve().as_uri()}?{mode}", uri=True, isolation_level=None)
            tables = self._tables()
        older = _older_format(tables)
        if not tables:
            self.empty = True      # being created by its writer, or never used
        elif older is not None:
            what = "it holds pickles, which this version never reads" if older == 1 else f"format {older}"
            raise JournalError(f"journal {str(self.path)!r} is of an older format ({what}); the next run on its "
                               f"output starts it afresh")
        else:
            self._check_schema(tables)

    def _copy_aside(self):
        """A private copy of the journal and its write-ahead log, removed when it is closed."""
        import shutil
        import tempfile

        self._copy_dir = tempfile.mkdtemp(prefix="wfl_like-journal-")
        copy = Path(self._copy_dir) / self.path.name
        for suffix in ("", "-wal"):
            shutil.copyfile(self.path.with_name(self.path.name + suffix), copy.with_name(copy.name + suffix))
        return copy

    def _open_for_writing(self):
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise PermissionError(_not_writable(self.path, "the file is read-only"))
        with self._guard():
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # for a new journal only (an existing one keeps its own): items are texts of a few
            # kB, and pages of 16 kB record them with about a fifth less CPU than SQLite's 4 kB
            self._db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a committed item survives the process being
            # killed at any moment (only a power loss may lose the last transactions)
            self._db.execute("PRAGMA synchronous=NORMAL")
            tables = self._tables()
            older = _older_format(tables)
            if older is not None:
                what = "pickled outputs, never read by this version" if older == 1 else f"format {older}"
                log.info("journal %s is of an older format (%s); starting it afresh", self.path, what)
                with self._transaction():
                    self._db.execute("DROP TABLE items")
                    self._db.execute("DROP TABLE meta")
                tables = {}
            if not tables:
                with self._transaction():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))
            else:
                self._check_schema(tables)

    def _tables(self):
        # SQLite's own tables (statistics of ANALYZE, ...) are no part of the schema
        names = [row[0] for row in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
        return {name: tuple(row[1] for row in self._db.execute(f"PRAGMA table_info({_quoted(name)})"))
                for name in names}

    def _check_schema(self, tables):
        if tables != _TABLES:
            raise JournalError(f"{str(self.path)!r} is not a wfl_like journal (it holds the tables "
                               f"{sorted(tables)}); move it away, or {_RECOVER}")
        with self._guard():
            # triggers or views planted in a journal could rewrite what a run records
            extra = sorted(f"{kind} {name}" for kind, name in self._db.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') OR "
                "(type='index' AND name NOT LIKE 'sqlite\\_autoindex\\_%' ESCAPE '\\' AND name != 'items_by_idx')"))
        if extra:
            raise JournalError(f"journal {str(self.path)!r} holds what no wfl_like journal has ({', '.join(extra)}); "
                               f"{_RECOVER}")
        found = self.meta("format")
        if found != FORMAT:
            raise JournalError(f"journal {str(self.path)!r} is of format {found}, not {FORMAT}; {_RECOVER}")
        # every value of the record checked once, here: a bad one is reported at once, by
        # a run and by ``wfl-like status`` alike
        with self._guard():
            keys = [row[0] for row in self._db.execute("SELECT key FROM meta")]
        for key in keys:
            self.meta(key)

    # --- the call -----------------------------------------------------------------------

    def meta(self, key, default=None):
        """A value of the run's record, checked for its type; ``default`` when not set."""
        if self.empty:
            return default
        with self._guard():
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return default
        try:
            value = json.loads(row[0])
        except (TypeError, ValueError, RecursionError):
            value = _Malformed
        wanted = _META_TYPES.get(key, object)
        if (value is _Malformed or not isinstance(value, wanted) or (isinstance(value, bool) and wanted is int)
                or (wanted is int and not 0 <= value < _LARGEST_COUNT)):
            raise JournalError(f"journal {str(self.path)!r} has a malformed {key!r} value; {_RECOVER}")
        return value

    def set_meta(self, **values):
        with self._transaction():
            self._set_meta(values)

    def _set_meta(self, values):
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             [(key, json.dumps(value)) for key, value in values.items()])

    def start(self, call_key, description):
        """Begin a run of the call ``call_key``.

        Returns
        -------
        str or None
            Why earlier results were dropped (the call changed), or None when they stand.
        """
        self.commit()
        previous = self.meta("call_key")
        reason = None
        if previous is not None and previous != call_key:
            reason = "the operation's code or its arguments changed"
            self.clear()
        self.run = self.meta("run", 0) + 1
        with self._guard():
            self._holds_items = self._db.execute("SELECT 1 FROM items LIMIT 1").fetchone() is not None
        self.set_meta(call_key=call_key, call=description, complete=False, started=time.time(),
                      pid=os.getpid(), host=socket.gethostname(), run=self.run)
        return reason

    def clear(self):
        """Forget every item (``overwrite=True``, or the call changed)."""
        with self._transaction():
            self._db.execute("DELETE FROM items")
            self._db.execute("DELETE FROM meta WHERE key != 'format'")

    def complete(self, **values):
        """End the run: drop the items it did not meet (the input no longer holds them), and
        record ``values`` with ``complete=True``, in one transaction."""
        self.commit()
        with self._transaction():
            self._db.execute("DELETE FROM items WHERE run != ?", (self.run,))
            self._set_meta({**values, "complete": True})

    # --- items --------------------------------------------------------------------------

    def lookup(self, index, key, n_files=None):
        """``(found, output, changed, rendered_at)`` for the item at ``index`` with cache key ``key``.

        ``found`` is true when an item with this very key was done; its output is a
        :class:`~wfl_like.configset.RenderedOutput` when it was kept as file text (whose
        ``file_i`` must be below ``n_files``, when given), and ``rendered_at`` the input
        location that text was rendered at (a tuple; None for other outputs).  A failed
        item is never reused: it is computed again.  ``changed`` tells that the journal
        holds another item at this position (the item changed, rather than being new).
        """
        if not self._holds_items:
            return False, None, False, None      # a first run: no look per item at all
        with self._guard():
            row = self._db.execute("SELECT status, form, output, file_i, count, size, loc FROM items WHERE key=?",
                                   (key,)).fetchone()
            if row is not None and row[0] == DONE:
                kept = stored_form.Stored(*row[1:])
                return True, self._unpacked(index, kept, n_files), False, self._rendered_at(index, kept)
            changed = self._db.execute("SELECT 1 FROM items WHERE idx=? LIMIT 1", (index,)).fetchone()
        return False, None, changed is not None, None

    def lookup_many(self, indices, keys, n_files=None):
        """:meth:`lookup` of several items at once (two queries per 500 keys, not one or two per item).

        Parameters
        ----------
        indices, keys : sequence of int, sequence of str
            The items' input indices and cache keys, in the same order.
        n_files : int, optional

        Returns
        -------
        list of (found, output, changed, rendered_at)
            One per item, in order.
        """
        if not self._holds_items:
            return [(False, None, False, None)] * len(keys)
        rows = {}
        with self._guard():
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                part = list(dict.fromkeys(keys[start:start + _KEYS_PER_QUERY]))
                marks = ", ".join("?" * len(part))
                for row in self._db.execute(f"SELECT key, status, form, output, file_i, count, size, loc FROM items "
                                            f"WHERE key IN ({marks})", part):
                    rows[row[0]] = row[1:]
            missed = [index for index, key in zip(indices, keys) if rows.get(key, (None,))[0] != DONE]
            occupied = set()
            for start in range(0, len(missed), _KEYS_PER_QUERY):
                part = missed[start:start + _KEYS_PER_QUERY]
                marks = ", ".join("?" * len(part))
                occupied.update(row[0] for row in self._db.execute(
                    f"SELECT DISTINCT idx FROM items WHERE idx IN ({marks})", part))
        looked = []
        for index, key in zip(indices, keys):
            row = rows.get(key)
            if row is not None and row[0] == DONE:
                kept = stored_form.Stored(*row[1:])
                looked.append((True, self._unpacked(index, kept, n_files), False, self._rendered_at(index, kept)))
            else:
                looked.append((False, None, index in occupied, None))
        return looked

    def _rendered_at(self, index, kept):
        try:
            return stored_form.rendered_at(kept)
        except stored_form.MalformedOutput as exc:
            raise JournalError(f"journal {str(self.path)!r}: the stored output for item {index} is malformed "
                               f"({exc}); {_RECOVER}") from None

    def _unpacked(self, index, stored, n_files):
        try:
            return stored_form.unpack(stored, n_files)
        except stored_form.MalformedOutput as exc:
            raise JournalError(f"journal {str(self.path)!r}: the stored output for item {index} is malformed "
                               f"({exc}); {_RECOVER}") from None

    def record(self, done=(), failed=(), met=()):
        """Persist a chunk's items: at once, or, with :attr:`hold`, held and committed with others
        (see the module's docstring).

        Parameters
        ----------
        done : list of (index, key, stored.Stored)
            Items computed, with their output as :func:`.stored.pack` gives it (a text with the
            location it was rendered at, :func:`.stored.at_location`).
        failed : list of (index, key, FailedItem)
        met : list of (index, key)
            Items reused from the journal: they stay on record as met by this run.
        """
        if not done and not failed and not met:
            return
        done_rows = [(key, index, self.run, DONE, *packed) for index, key, packed in done]
        failed_rows = [(key, index, self.run, FAILED, item.reason, item.traceback) for index, key, item in failed]
        met_rows = [(self.run, index, key) for index, key in met]
        self._held.append((done_rows, failed_rows, met_rows))
        self._held_items += len(done_rows) + len(failed_rows) + len(met_rows)
        self._held_bytes += sum(len(row[5]) for row in done_rows if isinstance(row[5], (str, bytes)))
        if self._held_since is None:
            self._held_since = time.monotonic()
        if (not self.hold or self._held_items >= HOLD_ITEMS or self._held_bytes >= HOLD_BYTES
                or self.commit_due() == 0):
            self.commit()

    @property
    def holding(self):
        """Whether rows recorded are waiting to be committed."""
        return bool(self._held)

    def commit_due(self, waiting=False):
        """Seconds until the rows held must be committed (0: now), or None when none are held.

        ``waiting``: for a driver about to wait for its next result, which commits them
        unless that result comes within these seconds (at most :data:`HOLD_WHILE_WAITING`).
        """
        if self._held_since is None:
            return None
        due = max(0.0, HOLD_SECONDS - (time.monotonic() - self._held_since))
        return min(due, HOLD_WHILE_WAITING) if waiting else due

    def commit(self):
        """Commit the rows held, in the order they were recorded, in one transaction."""
        if not self._held:
            return
        with self._transaction():
            for done_rows, failed_rows, met_rows in self._held:
                if done_rows:
                    self._db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, "
                                         "NULL)", done_rows)
                if failed_rows:
                    self._db.executemany("INSERT OR REPLACE INTO items "
                                         "VALUES (?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, ?, ?)", failed_rows)
                if met_rows:
                    self._db.executemany("UPDATE items SET run=?, idx=? WHERE key=?", met_rows)
        # forgotten only once written: a commit that failed (a full disk, a busy database, a
        # signal) is tried again by the next one, or by close()
        self._held, self._held_items, self._held_bytes, self._held_since = [], 0, 0, None

    def counts(self):
        """``{"done": n, "failed": m}`` of the run on record: the finished items of a
        complete run, or those the latest run has met so far."""
        self.commit()
        if self.empty:
            return {DONE: 0, FAILED: 0}
        if self.meta("complete") is True and self.meta("n_items") is not None:
            failed, n_items = self.meta("failed", 0), self.meta("n_items")
            if failed > n_items:
                raise JournalError(f"journal {str(self.path)!r} records {failed} failed items of {n_items}; "
                                   f"{_RECOVER}")
            return {DONE: n_items - failed, FAILED: failed}
        with self._guard():
            rows = self._db.execute("SELECT status, COUNT(*) FROM items WHERE run=? GROUP BY status",
                                    (self.meta("run", 0),)).fetchall()
        counts = dict(rows)
        return {DONE: counts.get(DONE, 0), FAILED: counts.get(FAILED, 0)}

    def done_indices(self):
        """Input indices of the items the latest run finished (computed or met), as a set."""
        self.commit()
        if self.empty:
            return set()
        with self._guard():
            rows = self._db.execute("SELECT idx FROM items WHERE status=? AND run=?",
                                    (DONE, self.meta("run", 0))).fetchall()
        if not all(type(row[0]) is int for row in rows):
            raise JournalError(f"journal {str(self.path)!r} holds a malformed item index; {_RECOVER}")
        return {row[0] for row in rows}

    def failures(self, limit=None):
        """``[(index, reason), ...]`` of the failed items of the latest run, in input order."""
        self.commit()
        if self.empty:
            return []
        # the reason as stored was cut to one line of bounded length; a tampered one is cut here
        sql = f"SELECT idx, substr(reason, 1, {REASON_LIMIT}) FROM items WHERE status=? AND run=? ORDER BY idx"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._guard():
            rows = self._db.execute(sql, (FAILED, self.meta("run", 0))).fetchall()
        if not all(type(index) is int and type(reason) is str for index, reason in rows):
            raise JournalError(f"journal {str(self.path)!r} holds a malformed failed item; {_RECOVER}")
        return rows

    # --- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self):
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _guard(self):
        """SQLite's errors, said in terms of the journal file and what to do."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" in message or "busy" in message:
                raise      # a writer holds it for a moment: the caller may try again
            if self.read_only and "unable to open" in message:
                raise PermissionError(f"cannot read the journal {str(self.path)!r} ({message})") from None
            if "readonly" in message or "unable to open" in message:
                raise PermissionError(_not_writable(self.path, message)) from None
            if "disk is full" in message or "disk I/O error" in message:
                # a healthy journal on a full (or failing) disk: discarding it would only
                # lose what it keeps
                raise OutputWriteError(f"cannot write the journal {str(self.path)!r} ({message}); free space on "
                                       f"its disk and rerun: the items already journaled are kept and not "
                                       f"computed again", self.path,
                                       errno.ENOSPC if "full" in message else errno.EIO) from None
            raise JournalError(f"journal {str(self.path)!r} cannot be used ({message}); {_RECOVER}") from None
        except sqlite3.Error as exc:
            raise JournalError(f"{str(self.path)!r} is not a usable wfl_like journal ({exc}); {_RECOVER}") from None

    def close(self):
        """Commit the rows held (a run that stops keeps what it computed), release the journal."""
        try:
            self.commit_or_warn()
        finally:
            self._release()

    def commit_or_warn(self):
        """Commit the rows held, telling (not raising) a failure: for a run on its way out of
        another error, which is the one to raise."""
        if self._db is None or not self._held:
            return
        n_held = self._held_items
        try:
            self.commit()
        except Exception as exc:
            log.warning("journal %s: the last %d items could not be committed (%s); a rerun computes them "
                        "again", self.path, n_held, exc)

    def _release(self):
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        copy_dir = getattr(self, "_copy_dir", None)
        if copy_dir is not None:
            import shutil

            shutil.rmtree(copy_dir, ignore_errors=True)
            self._copy_dir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


_Malformed = object()


def _older_format(tables):
    """The number of the older format whose tables these are, or None."""
    return next((number for number, older in _OLDER_TABLES.items() if tables == older), None)


def _quoted(name):
    return '"' + name.replace('"', '""') + '"'


def _not_writable(path, why):
    return (f"cannot write the journal {str(path)!r} ({why}): make it and its directory writable, or give "
            f"the journal another place (AutoparaInfo(cache='path/to/journal.sqlite')), or run without "
            f"one (AutoparaInfo(cache=False): no resume)")


def _read_only_mode(path):
    """SQLite's URI mode to read a journal without writing anything.

    A journal in WAL mode needs its ``-shm`` companion even to be read; where the
    directory cannot be written (read-only media), no writer can be at work either, so
    the file is read as immutable.
    """
    directory = path.resolve().parent
    try:
        read_only_media = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_media = False
    return "mode=ro&immutable=1" if read_only_media or not os.access(directory, os.W_OK) else "mode=ro"


def _remove_database(path):
    """Delete a journal and SQLite's companions without reading them."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        try:
            path.with_name(name).unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise JournalError(f"journal path {str(path.with_name(name))!r} is a directory; move it away") from None


class _OutputLock:
    """The journal's own lock: a :class:`~wfl_like.io.locking.FileLock` on a file of its own
    (``.lock`` beside the journal), apart from SQLite's record locks on the database.  The
    holder removes that file when it is done."""

    def __init__(self, journal):
        self.path = journal.with_name(journal.name + ".lock")
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionError(_not_writable(journal, f"cannot create its directory: {exc.strerror}")) from None
        try:
            self._lock = FileLock(self.path)
        except (Held, Moving):
            raise _locked(journal) from None
        except OSError as exc:
            raise PermissionError(_not_writable(journal, f"cannot create {self.path.name}: {exc.strerror}")) from None

    def close(self):
        self._lock.release(remove=True)


def _locked(journal):
    name = journal.name
    if name.startswith(".") and name.endswith(".journal.sqlite"):
        what = f"output {str(journal.with_name(name[1:].removesuffix('.journal.sqlite')))!r}"
    else:
        what = f"the run whose journal is {str(journal)!r}"      # a journal named by cache=PATH
    return OutputLockedError(f"{what} is being written by {_holder(journal)}; wait for it "
                             f"to finish (or stop it) before running again")


def _holder(journal):
    """Who holds the lock, as the journal records it (read as untrusted text)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=1)) as db:
            rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('pid', 'host')").fetchall())
        pid, host = json.loads(rows["pid"]), json.loads(rows["host"])
    except (sqlite3.Error, KeyError, ValueError, TypeError, OSError):
        return "another process"
    if type(pid) is not int or type(host) is not str:
        return "another process"
    return f"process {pid} on {host[:100]}"
