"""The results file of a task: one record per item, that a reader can trust after a kill mid-write.

Each record is one line, ``CHECKSUM JSON\\n``: the JSON is ASCII with no line break in it
(``json.dumps`` escapes them), and ``CHECKSUM`` is the hex BLAKE2b digest of the JSON's
bytes.  The job appends a record with one ``write`` and an ``fsync`` as each item
finishes, and a last ``done`` record when every item has one.  A job killed mid-write
leaves at most one torn line, at the end: the reader passes over it, and a job that takes
the task up again cuts it off before it appends.  No pickles: a record holds the
extended-XYZ text of the item's outputs (or, for outputs kept in memory, the journal's
data-only form of them) or the one-line reason of its failure.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

RESULTS_NAME = "results"
_DIGEST_SIZE = 8
_HEX_LENGTH = 2 * _DIGEST_SIZE


@dataclass(frozen=True)
class ItemRecord:
    """What came of one item of a task.

    Attributes
    ----------
    index : int
        The item's index in the whole input of the call.
    ok : bool
        Whether the operation gave an output that could be stored.
    text : str
        Extended-XYZ text of its output structures ("" for none, or for a failure).
    file_i : int
        The output file the text goes to (0 for a single file).
    count : int
        Structures in ``text``.
    reason : str
        One line, for a failed item: the exception's type and message.
    data : str or None
        For outputs kept in memory: the output in the journal's data-only format
        (:mod:`~wfl_like.autoparallelize.resume.codec`), exact where text is not.
    """

    index: int
    ok: bool
    text: str = ""
    file_i: int = 0
    count: int = 0
    reason: str = ""
    data: str = None

    def as_json(self):
        if self.ok:
            payload = {"kind": "item", "index": self.index, "ok": True, "file_i": self.file_i, "count": self.count,
                       "text": self.text}
            if self.data is not None:
                payload["data"] = self.data
            return payload
        return {"kind": "item", "index": self.index, "ok": False, "reason": self.reason}


@dataclass(frozen=True)
class TaskResults:
    """The complete records of a results file.

    Attributes
    ----------
    records : list of ItemRecord
        In the order they were written.
    done : bool
        The job wrote its ``done`` record: every item of the task has a record.
    end : int
        Byte offset just past the last complete record (where a torn one begins).
    """

    records: list
    done: bool
    end: int

    def by_index(self):
        """``{index: ItemRecord}``; an index recorded twice keeps its first record."""
        table = {}
        for record in self.records:
            table.setdefault(record.index, record)
        return table

    def duplicated(self):
        """Indices with more than one record: a job never writes them (it skips recorded items,
        and holds the file while it writes), so the file was changed otherwise."""
        seen, twice = set(), set()
        for record in self.records:
            (twice if record.index in seen else seen).add(record.index)
        return twice


def encode(payload):
    """The line of one record: ``CHECKSUM JSON\\n`` as bytes."""
    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return hashlib.blake2b(body, digest_size=_DIGEST_SIZE).hexdigest().encode("ascii") + b" " + body + b"\n"


def read_results(task_dir):
    """The complete records of ``task_dir``'s results file, a torn last one left out.

    Parameters
    ----------
    task_dir : str or Path

    Returns
    -------
    TaskResults
        No records (and not done) when there is no results file yet.

    Raises
    ------
    ValueError
        A damaged record that is not the last line (the file was changed by something other
        than a job): the message names the file and the line.
    """
    path = Path(task_dir) / RESULTS_NAME
    records, done = [], False
    payloads, end = read_lines(path, "remove the task's directory to compute its items again")
    for line_no, payload in payloads:
        if payload.get("kind") == "done":
            done = True
        else:
            records.append(_record(payload, path, line_no))
    return TaskResults(records, done, end)


def read_lines(path, remedy):
    """``([(line number, payload dict)], end)`` of a file of :func:`encode` d lines.

    ``end`` is the byte offset just past the last complete line: a torn last line (a
    writer killed mid-write) is left out.  A missing file has no lines.

    Raises
    ------
    ValueError
        A damaged line that is not the last one; the message names the file, the line,
        and ``remedy``.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    payloads, offset = [], 0
    lines = data.split(b"\n")
    # the piece after the last newline is a torn line (or nothing)
    for line_no, line in enumerate(lines[:-1], start=1):
        payload = _decoded(line)
        if payload is None:
            if line_no == len(lines) - 1:
                break       # a torn last line that happens to end where a newline was
            raise ValueError(f"file {str(path)!r} line {line_no} is damaged (bad checksum or framing); {remedy}")
        offset += len(line) + 1
        payloads.append((line_no, payload))
    return payloads, offset


def _decoded(line):
    """The JSON payload of a record line, or None when its framing or checksum is wrong."""
    if len(line) < _HEX_LENGTH + 2 or line[_HEX_LENGTH:_HEX_LENGTH + 1] != b" ":
        return None
    body = line[_HEX_LENGTH + 1:]
    if hashlib.blake2b(body, digest_size=_DIGEST_SIZE).hexdigest().encode("ascii") != line[:_HEX_LENGTH]:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _record(payload, path, line_no):
    try:
        if payload["ok"]:
            data = payload.get("data")
            return ItemRecord(int(payload["index"]), True, str(payload["text"]), int(payload["file_i"]),
                              int(payload["count"]), data=None if data is None else str(data))
        return ItemRecord(int(payload["index"]), False, reason=str(payload["reason"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"results file {str(path)!r} line {line_no} is not an item record of wfl_like; remove "
                         f"the task's directory to compute its items again") from None


class LineWriter:
    """Appends :func:`encode` d lines to a file, each written whole and fsynced before the next.

    Opening it cuts off a torn last line left by a killed writer, so that what it appends
    starts on a line of its own.  With ``exclusive``, it holds an exclusive ``flock`` on the
    file while open (waiting for it), so that two writers never interleave.

    Parameters
    ----------
    path : str or Path
    end : int
        Where the complete lines end (from :func:`read_lines`).
    exclusive : bool, default False
    """

    def __init__(self, path, end, exclusive=False):
        self.path = Path(path)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if exclusive:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX)
        if os.fstat(self._fd).st_size > end:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        if created:
            _fsync_dir(self.path.parent)

    def write_payload(self, payload):
        """Write one line holding ``payload`` (a JSON-able dict) and fsync it."""
        view = memoryview(encode(payload))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)      # releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class ResultsWriter(LineWriter):
    """Appends records to a task's results file (see :class:`LineWriter`).

    A second job given the same task (a resubmission while an old job still winds down)
    waits for the first to let go of the file, then computes only what is still missing.

    Parameters
    ----------
    task_dir : str or Path

    Attributes
    ----------
    done_before : set of int
        Indices of the items that had a record when the file was opened.
    """

    def __init__(self, task_dir):
        path = Path(task_dir) / RESULTS_NAME
        # opened (and locked) before it is read: what a job that held it wrote counts
        super().__init__(path, end=path.stat().st_size if path.exists() else 0, exclusive=True)
        existing = read_results(task_dir)
        if os.fstat(self._fd).st_size > existing.end:
            os.ftruncate(self._fd, existing.end)
            os.fsync(self._fd)
        self.done_before = {record.index for record in existing.records}

    def append(self, record):
        """Write one :class:`ItemRecord` and fsync it."""
        self.write_payload(record.as_json())

    def finish(self, n_items):
        """Write the ``done`` record: every one of the task's ``n_items`` items has a record."""
        self.write_payload({"kind": "done", "n_items": n_items})


def _fsync_dir(directory):
    """Make a new file's name durable (its directory's entry), where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
