"""Where each frame of an (extended) XYZ file starts and ends, found by one scan of its bytes.

The driver of a run over file inputs never parses structures: it indexes the frames of
each file by byte offset and hands the workers byte ranges.  This module builds that index.

Interface
---------
``index_frames(path) -> FrameIndex``
    Scans the file once (newlines found by numpy in blocks of :data:`BLOCK_BYTES`, frames
    walked by the atom count of each header line).  The index is kept in a cache directory
    (``$WFL_LIKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/wfl_like``, else ``~/.cache/wfl_like``,
    under ``frame-index/``), keyed by the file's resolved path, size, modification and
    change times, inode and device, so a rerun on an unchanged file skips the scan and a
    file changed in any way is scanned again.
``FrameIndex.n_frames``
    Number of frames.
``FrameIndex.offsets``
    ``int64`` array of ``n_frames + 1`` byte offsets: frame ``i`` is the bytes
    ``[offsets[i], offsets[i + 1])``.  The last offset is the file size (trailing blank
    lines belong to the last frame).
``FrameIndex.line(i) -> int``
    1-based line number of frame ``i``'s header, for the reader's error messages
    (``read_frames(path, start, end, first_frame=i, first_line=index.line(i))``).
``FrameIndex.location(i) -> tuple or None``
    The location stored in frame ``i``'s comment line as ``_ConfigSet_loc=" / 2 / 0"``,
    as a tuple (``()`` for an empty value), or None when the frame has none.
``FrameIndex.select(index) -> numpy.ndarray``
    The frame numbers that ``ase.io.iread(path, index=index)`` yields, as ConfigSet's
    ``read_kwargs={"index": ...}`` selects them (``index`` an int, a slice, or a string
    such as ``"::2"`` or ``"1:10"``).
``scan_frames(buffer, source)``
    The same split of frames held in memory, as :class:`FrameSpan` s (used by the reader).

The frames are split as ASE's extended-XYZ reader splits them: a header line holding
the number of atoms N, a comment line, N atom lines, and up to three ``VEC`` lines.
Windows line ends (``\\r\\n``) are fine; blank lines at the end are passed over; a last
line without a line end counts as a line.
"""

from __future__ import annotations

import hashlib
import locale
import logging
import mmap
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wfl_like.errors import InputFileError
from wfl_like.locations import LOC_KEY, parse_location

__all__ = ["BLOCK_BYTES", "FrameIndex", "FrameRun", "FrameSpan", "cache_dir", "frame_runs", "index_frames",
           "refuse_lone_cr", "scan_frames"]

log = logging.getLogger(__name__)

# Newlines are searched this many bytes at a time, so a file larger than memory is indexed
# with bounded memory (the file is mapped, not read).
BLOCK_BYTES = 64 * 2**20

# Bumped whenever what is stored changes, so that an older cache file is never trusted.
INDEX_FORMAT = 1

_MAX_VEC_LINES = 3
# A header line longer than this is not an atom count (ASE's int() would take one padded
# with this much white space; no writer pads so).
_MAX_HEADER_BYTES = 4096
_NON_SPACE = re.compile(rb"\S")
# The location pair in its plain form (matched where the key starts): a quoted value or a bare one.
_LOC_VALUE = re.compile(re.escape(LOC_KEY.encode()) + rb'[ \t]*=[ \t]*(?:"([^"\\\n]*)"|([^\s"\'{}\[\]\\]+))(?!\S)')
_NOT_PLAIN_BEFORE = b"\\'{["
_LOC_KEY_BYTES = LOC_KEY.encode()


@dataclass(frozen=True)
class FrameSpan:
    """Where one frame lies in a buffer: byte offsets and first line number.

    Attributes
    ----------
    start, end : int
        The frame's bytes are ``[start, end)``: ``end`` is just past the line end of its
        last atom (or VEC) line, where the next frame starts.
    comment_start, comment_end : int
        The comment line, without its line end.
    n_atoms : int
        The header's atom count.
    n_vec : int
        Number of ``VEC`` lines after the atoms (cell vectors of ASE's plain-XYZ dialect).
    line : int
        1-based line number of the header line.
    """

    start: int
    end: int
    comment_start: int
    comment_end: int
    n_atoms: int
    n_vec: int
    line: int


class _LineEnds:
    """The newline positions of a buffer, found a block at a time, consumed in order."""

    def __init__(self, view, start=0):
        self._view, self._size = view, len(view)
        self._block_start = self._block_end = start
        self._ends = np.empty(0, dtype=np.int64)
        self._j = 0

    def _load(self):
        """Find the newlines of the next block; False at the end of the buffer."""
        if self._block_end >= self._size:
            return False
        start = self._block_end
        stop = min(start + BLOCK_BYTES, self._size)
        self._ends = np.flatnonzero(self._view[start:stop] == 10) + start
        if stop == self._size and (not len(self._ends) or self._ends[-1] != stop - 1):
            # a last line without a line end still counts as a line
            self._ends = np.append(self._ends, stop)
        self._block_start, self._block_end, self._j = start, stop, 0
        return True

    def next(self):
        """The position of the line end of the next line (its ``\\n``, or the buffer size), or None."""
        while self._j >= len(self._ends):
            if not self._load():
                return None
        end = int(self._ends[self._j])
        self._j += 1
        return end

    def skip(self, count):
        """Consume ``count`` lines; the line end of the last, or None when the buffer ends first."""
        end = None
        while count > 0:
            left = len(self._ends) - self._j
            if left >= count:
                self._j += count
                return int(self._ends[self._j - 1])
            if left:
                end = int(self._ends[-1])
            count -= left
            self._j = len(self._ends)
            if not self._load():
                return None
        return end

    def same_headers(self, header, step):
        """Consume the frames from here whose header line is ``header`` and that have
        ``step`` lines (no VEC lines): ``(starts, ends, comment_starts, comment_ends)``, or None.

        Only frames of the current block, and only those followed by another such header
        (the frame after the last one might have VEC lines): the rest is read line by line.
        """
        ends, j = self._ends, self._j
        if j < 1 or j >= len(ends):
            return None
        most = (len(ends) - j) // step
        header_bytes = np.frombuffer(header, dtype=np.uint8)
        width = len(header_bytes)
        tried, count = 0, 0
        for tried in (16, 256, 4096, 65536, most):
            tried = min(tried, most)
            header_ends = ends[j:j + tried * step:step]
            header_starts = ends[j - 1:j - 1 + tried * step:step] + 1
            same = header_ends - header_starts == width
            if width and same.any():
                rows = header_starts[same][:, None] + np.arange(width)
                same[same] = (self._view[rows] == header_bytes).all(axis=1)
            count = len(same) if same.all() else int(np.argmin(same))
            if count < tried or tried == most:
                break
        count -= 1  # the last one's successor is not known to be a header
        if count < 1:
            return None
        header_ends, header_starts = header_ends[:count], header_starts[:count]
        comment_ends = ends[j + 1:j + 1 + count * step:step]
        comment_ends = comment_ends - (self._view[comment_ends - 1] == 13)
        frame_ends = np.minimum(ends[j + step - 1:j + step - 1 + count * step:step] + 1, self._size)
        self._j = j + count * step
        return header_starts, frame_ends, header_ends + 1, np.maximum(comment_ends, header_ends + 1)

    def peek(self):
        """The line end of the next line without consuming it, or None."""
        while self._j >= len(self._ends):
            if not self._load():
                return None
        return int(self._ends[self._j])


def scan_frames(buffer, source, *, first_frame=0, first_line=1):
    """Yield a :class:`FrameSpan` for each frame of an (extended) XYZ text in ``buffer``.

    Parameters
    ----------
    buffer : bytes, mmap.mmap or another buffer of bytes
        Whole frames, from the first byte.
    source : str
        What to name in error messages (the file).
    first_frame, first_line : int
        Frame number and 1-based line number of the buffer's first byte in its file,
        for error messages.

    Raises
    ------
    InputFileError
        A header line that is not an atom count, a blank line followed by more text, or
        a frame cut short by the end of the buffer; the message names the file, frame
        and line.
    """
    for run in frame_runs(buffer, source, first_frame=first_frame, first_line=first_line):
        step = run.n_atoms + 2 + run.n_vec
        for k, (start, end, comment_start, comment_end) in enumerate(zip(
                run.starts.tolist(), run.ends.tolist(), run.comment_starts.tolist(), run.comment_ends.tolist())):
            yield FrameSpan(start=start, end=end, comment_start=comment_start, comment_end=comment_end,
                            n_atoms=run.n_atoms, n_vec=run.n_vec, line=run.line + k * step)


@dataclass(frozen=True)
class FrameRun:
    """Consecutive frames with the same header line (so the same number of atoms).

    Attributes
    ----------
    starts, ends, comment_starts, comment_ends : numpy.ndarray
        int64 offsets per frame, as in :class:`FrameSpan`.
    n_atoms, n_vec : int
        Shared by the frames of the run.
    line : int
        1-based line number of the first frame's header.
    """

    starts: np.ndarray
    ends: np.ndarray
    comment_starts: np.ndarray
    comment_ends: np.ndarray
    n_atoms: int
    n_vec: int
    line: int


def frame_runs(buffer, source, *, first_frame=0, first_line=1):
    """Yield the frames of ``buffer`` as :class:`FrameRun` s; arguments and errors as :func:`scan_frames`.

    A frame is read line by line; the frames after it whose header lines are the same
    bytes are then found at once, by numpy over the newline positions (they must start
    every ``n_atoms + 2`` lines), so a file of equal-sized frames costs little Python.
    """
    view = np.frombuffer(buffer, dtype=np.uint8)
    size = len(view)
    lines = _LineEnds(view)
    start, frame, line_no = 0, first_frame, first_line
    while start < size:
        header_end = lines.next()
        header = _header_line(buffer, start, header_end, source, frame, line_no)
        if not header.strip():
            if _NON_SPACE.search(buffer, header_end) is None:
                return
            raise _frame_error(source, frame, line_no, "a blank line where the number of atoms was expected")
        n_atoms = _atom_count(header, source, frame, line_no)
        comment_end = lines.next()
        last_end = comment_end if n_atoms == 0 else lines.skip(n_atoms)
        if comment_end is None or last_end is None:
            raise _frame_error(source, frame, line_no, f"the file ends inside this frame of {n_atoms} atoms")
        n_vec = 0
        while n_vec < _MAX_VEC_LINES and last_end + 1 < size:
            next_end = lines.peek()
            if not bytes(buffer[last_end + 1:next_end]).lstrip().startswith(b"VEC"):
                break
            last_end = lines.next()
            n_vec += 1
        end = min(last_end + 1, size)
        comment_start = header_end + 1
        yield FrameRun(np.array([start]), np.array([end]), np.array([comment_start]),
                       np.array([_strip_cr(buffer, comment_start, comment_end)]), n_atoms, n_vec, line_no)
        start, frame, line_no = end, frame + 1, line_no + n_atoms + 2 + n_vec
        if n_vec == 0 and start < size:
            run = lines.same_headers(header, n_atoms + 2)
            if run is not None:
                yield FrameRun(*run, n_atoms=n_atoms, n_vec=0, line=line_no)
                start, frame = int(run[1][-1]), frame + len(run[0])
                line_no += len(run[0]) * (n_atoms + 2)


def _header_line(buffer, start, end, source, frame, line_no):
    """The bytes of a header line; a long one (a file that is not XYZ, a sparse file of
    zeros) is not copied: blank, it is empty, else it is refused naming how it starts."""
    if end - start <= _MAX_HEADER_BYTES:
        return bytes(buffer[start:end])
    first = _NON_SPACE.search(buffer, start, end)
    if first is None:
        return b""
    shown = bytes(buffer[first.start():first.start() + 60]).decode("utf-8", "replace")
    raise _frame_error(source, frame, line_no, f"a line of {end - start} bytes where the number of atoms was "
                                               f"expected, starting {shown!r}")


def _strip_cr(buffer, start, end):
    return end - 1 if end > start and buffer[end - 1:end] == b"\r" else end


def _atom_count(header, source, frame, line_no):
    try:
        # int() takes bytes with surrounding whitespace, as ASE's int(line) takes the text
        n_atoms = int(header)
    except ValueError:
        n_atoms = _atom_count_of_text(header)
    if n_atoms < 0:
        text = header.decode("utf-8", "replace").strip()
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise _frame_error(source, frame, line_no, f"expected the number of atoms, found {shown!r}")
    return n_atoms


def _atom_count_of_text(header):
    """The count ASE's ``int(line)`` reads from the decoded header (other digits and white
    space than ASCII's), or -1."""
    try:
        return int(header.decode(locale.getpreferredencoding(False)))
    except (ValueError, LookupError):
        return -1


def _frame_error(source, frame, line_no, what):
    return InputFileError(f"could not read {source!r} at frame {frame} (line {line_no}): {what}; check that the "
                          f"file is complete and in extended XYZ format")


class FrameIndex:
    """The byte offsets (and stored locations) of the frames of one file.

    Parameters
    ----------
    path : str
        The file, as given.
    offsets : numpy.ndarray
        ``n_frames + 1`` int64 offsets; frame ``i`` is bytes ``[offsets[i], offsets[i + 1])``.
    loc_frames, loc_starts, loc_values : numpy.ndarray, optional
        Stored locations in compact form: the frames that have one (increasing), where each
        one's numbers start in ``loc_values`` (one more entry than ``loc_frames``), and the
        numbers of all of them in turn.
    lines : numpy.ndarray, optional
        int64 1-based line number of each frame's header line, for error messages.
    """

    def __init__(self, path, offsets, loc_frames=None, loc_starts=None, loc_values=None, lines=None):
        self.path = str(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lines = (np.zeros(len(self.offsets) - 1, np.int64) if lines is None
                      else np.asarray(lines, dtype=np.int64))
        self._loc_frames = np.zeros(0, np.int64) if loc_frames is None else np.asarray(loc_frames, np.int64)
        self._loc_starts = np.zeros(1, np.int64) if loc_starts is None else np.asarray(loc_starts, np.int64)
        self._loc_values = np.zeros(0, np.int64) if loc_values is None else np.asarray(loc_values, np.int64)

    @property
    def n_frames(self) -> int:
        """Number of frames in the file."""
        return len(self.offsets) - 1

    def __len__(self):
        return self.n_frames

    def __repr__(self):
        return f"FrameIndex({self.path!r}, n_frames={self.n_frames})"

    def byte_range(self, i: int) -> tuple[int, int]:
        """``(start, end)`` of frame ``i``: its bytes are ``[start, end)``."""
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def line(self, i: int) -> int:
        """1-based line number of frame ``i``'s header line (0 when not known)."""
        return int(self.lines[i])

    def location(self, i: int) -> tuple | None:
        """The location stored in frame ``i`` (``_ConfigSet_loc``) as a tuple, or None when it has none."""
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range for {self.path!r} with {self.n_frames} frames")
        k = int(np.searchsorted(self._loc_frames, i))
        if k == len(self._loc_frames) or self._loc_frames[k] != i:
            return None
        return tuple(int(v) for v in self._loc_values[self._loc_starts[k]:self._loc_starts[k + 1]])

    @property
    def has_locations(self) -> bool:
        """Whether any frame stores a location."""
        return len(self._loc_frames) > 0

    def select(self, index=":") -> np.ndarray:
        """The frame numbers that ``ase.io.iread(path, index=index)`` yields, in its order.

        This is the reader :class:`~wfl_like.ConfigSet` uses, so ``read_kwargs={"index": ...}``
        selects these frames.  As there, an int selects at most one frame (none when it is
        out of range); ``ase.io.read`` differs only in returning that frame alone.

        Parameters
        ----------
        index : int, slice or str
            As ASE's ``index`` read argument: ``3``, ``-1``, ``":"``, ``"::2"``, ``"1:10"``,
            ``slice(None, None, -1)``.

        Returns
        -------
        numpy.ndarray
            int64 frame numbers.

        Raises
        ------
        TypeError
            An index that is neither an int, a slice nor such a string.
        """
        index = _parse_index(index, self.path)
        if not isinstance(index, slice):
            index = slice(index, (index + 1) or None)
        n_seen = self.n_frames
        if index.stop is not None and index.stop >= 0:
            # ASE's reader stops looking for frames after frame number `stop` and slices
            # only those: with a negative step, "5:1:-1" then selects nothing
            n_seen = min(n_seen, index.stop + 1)
        return np.arange(n_seen, dtype=np.int64)[index]

    def _arrays(self):
        return {"offsets": self.offsets, "loc_frames": self._loc_frames, "loc_starts": self._loc_starts,
                "loc_values": self._loc_values, "lines": self.lines}


def _parse_index(index, path):
    if isinstance(index, str):
        if ":" not in index:
            try:
                return int(index)
            except ValueError:
                raise TypeError(f"index {index!r} for {path!r} is not a frame number or a slice such as "
                                f"'::2'") from None
        try:
            return slice(*(None if part == "" else int(part) for part in index.split(":")))
        except (ValueError, TypeError):
            raise TypeError(f"index {index!r} for {path!r} is not a slice such as '::2' or '1:10'") from None
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return int(index)
    if isinstance(index, slice):
        return index
    raise TypeError(f"index {index!r} for {path!r} must be an int, a slice or a string such as '::2'")


# --- the scan -------------------------------------------------------------------------


def _scan_file(path, size):
    """FrameIndex of the file at ``path`` of ``size`` bytes."""
    if size == 0:
        return FrameIndex(path, np.zeros(1, np.int64), lines=np.zeros(0, np.int64))
    error = None
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        try:
            offsets, lines, loc_frames, loc_starts, loc_values = _scan_buffer(buffer, str(path))
        except BaseException as exc:
            # the traceback's frames hold views of the map, which could then not be closed
            # (a BufferError would hide the error, a MemoryError or an interrupt included)
            error = exc.with_traceback(None)
    if error is not None:
        raise error
    if len(offsets) > 1:
        offsets[-1] = size
    return FrameIndex(path, offsets, np.array(loc_frames, np.int64), np.array(loc_starts, np.int64),
                      np.array(loc_values, np.int64), lines)


def _scan_buffer(buffer, source):
    refuse_lone_cr(buffer, source)
    ends, lines = [np.zeros(1, np.int64)], [np.zeros(0, np.int64)]
    loc_frames, loc_starts, loc_values = [], [0], []
    key = _LOC_KEY_BYTES
    frame = 0
    for run in frame_runs(buffer, source):
        ends.append(run.ends)
        lines.append(run.line + np.arange(len(run.ends), dtype=np.int64) * (run.n_atoms + 2 + run.n_vec))
        if buffer.find(key, int(run.comment_starts[0]), int(run.comment_ends[-1])) != -1:
            step = run.n_atoms + 2 + run.n_vec
            for k, (comment_start, comment_end) in enumerate(zip(run.comment_starts.tolist(),
                                                                 run.comment_ends.tolist())):
                loc = _stored_location(buffer, comment_start, comment_end, source, frame + k, run.line + k * step)
                if loc is not None:
                    loc_frames.append(frame + k)
                    loc_values.extend(loc)
                    loc_starts.append(len(loc_values))
        frame += len(run.ends)
    return (np.concatenate(ends).astype(np.int64), np.concatenate(lines).astype(np.int64), loc_frames, loc_starts,
            loc_values)


def refuse_lone_cr(buffer, path):
    """Raise InputFileError when ``buffer`` holds a carriage return not followed by a newline.

    Such a return is a line end to ASE's reader (universal newlines) but not to this scan
    or to libextxyz: such text is refused rather than split differently.  ``path`` names
    the file in the message.
    """
    if buffer.find(b"\r") == -1:
        return
    view = np.frombuffer(buffer, dtype=np.uint8)
    for start in range(0, len(view), BLOCK_BYTES):
        cr = np.flatnonzero(view[start:start + BLOCK_BYTES] == 13) + start
        followed = cr + 1 < len(view)
        if not followed.all() or not (view[cr[followed] + 1] == 10).all():
            lone = int(cr[~followed][0] if not followed.all() else cr[view[cr + 1] != 10][0])
            raise InputFileError(f"could not read {str(path)!r}: a carriage return not followed by a newline at "
                                 f"byte {lone} (old Mac line ends); convert the file to \\n or \\r\\n line ends")


def _stored_location(buffer, comment_start, comment_end, source, frame, line):
    key = _LOC_KEY_BYTES
    first = buffer.find(key, comment_start, comment_end)
    if first == -1:
        return None
    match = _LOC_VALUE.match(buffer, first, comment_end)
    before = buffer[comment_start:first]
    plain = (match is not None and (first == comment_start or buffer[first - 1:first] in (b" ", b"\t"))
             and buffer.find(key, first + 1, comment_end) == -1 and before.count(b'"') % 2 == 0
             and len(before.translate(None, _NOT_PLAIN_BEFORE)) == len(before)
             # ASE's parser takes the pair after an empty "" as that value's text
             and b'""' not in before
             and (match.group(1) != b"" or _NON_SPACE.search(buffer, match.end(), comment_end) is None))
    if plain:
        text = (match.group(1) if match.group(1) is not None else match.group(2)).decode("utf-8", "replace")
    else:
        # quotes, escapes or repeats around the key: what ASE's own parser makes of the line
        text = _location_text_by_ase(bytes(buffer[comment_start:comment_end]))
    if text is None:
        return None
    try:
        if not isinstance(text, str):
            raise ValueError(f"{LOC_KEY} value {text!r} is not a location of the form ' / 2 / 0'")
        return parse_location(text)
    except ValueError as exc:
        raise InputFileError(f"input file {source!r}, frame {frame} (line {line + 1}): {exc}; fix or remove "
                             f"that info entry (it is written by OutputSpec to keep the nesting)") from None


def _location_text_by_ase(comment):
    from ase.io.extxyz import key_val_str_to_dict

    try:
        info = key_val_str_to_dict(comment.decode("utf-8", "replace").strip())
    except ValueError:
        return None  # the frame's parse reports what is wrong with this line
    return info.get(LOC_KEY)


# --- the cache ------------------------------------------------------------------------


def cache_dir() -> Path:
    """The directory the frame indices are kept in (it may not exist yet).

    ``$WFL_LIKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/wfl_like``, else ``~/.cache/wfl_like``;
    the indices go in its ``frame-index`` subdirectory.
    """
    explicit = os.environ.get("WFL_LIKE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "wfl_like"


def _cache_file(resolved, stat):
    identity = repr((INDEX_FORMAT, str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                     stat.st_ino, stat.st_dev))
    path_part = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / "frame-index" / f"{path_part}-{digest}.npz", path_part, digest


def _load_cached(cache_file, digest, path, size):
    """The cached index, or None when there is none or it cannot be trusted."""
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in ("format", "digest", "offsets", "loc_frames", "loc_starts",
                                                      "loc_values", "lines")}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # a torn, foreign or unreadable file: never trusted, replaced below
        log.debug("ignoring unreadable frame index %s: %s", cache_file, exc)
        return None
    if not _valid(arrays, digest, size):
        log.debug("ignoring frame index %s: it does not describe %s", cache_file, path)
        return None
    return FrameIndex(path, arrays["offsets"], arrays["loc_frames"], arrays["loc_starts"], arrays["loc_values"],
                      arrays["lines"])


def _valid(arrays, digest, size):
    def int_vector(a):
        return isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1

    offsets, frames, starts, values, lines = (arrays[k] for k in ("offsets", "loc_frames", "loc_starts",
                                                                   "loc_values", "lines"))
    if not (arrays["format"].shape == () and arrays["format"] == INDEX_FORMAT and arrays["digest"].shape == ()
            and str(arrays["digest"]) == digest):
        return False
    if not all(int_vector(a) for a in (offsets, frames, starts, values, lines)) or len(offsets) < 1 or offsets[0] != 0:
        return False
    n_frames = len(offsets) - 1
    if len(lines) != n_frames or (n_frames and (lines[0] < 1 or not (np.diff(lines) > 0).all())):
        return False
    if n_frames and (offsets[-1] != size or not (np.diff(offsets) > 0).all()):
        return False
    if len(starts) != len(frames) + 1 or starts[0] != 0 or starts[-1] != len(values) or (np.diff(starts) < 0).any():
        return False
    if len(frames) and (frames[0] < 0 or frames[-1] >= n_frames or not (np.diff(frames) > 0).all()):
        return False
    return not (values < 0).any()


def _store(index, cache_file, path_part, digest):
    """Write the index atomically; on any OS error keep going without it."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=cache_file.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, format=np.array(INDEX_FORMAT), digest=np.array(digest), **index._arrays())
            os.replace(temp, cache_file)
        except BaseException:
            with _suppress_os_error():
                os.unlink(temp)
            raise
        for old in cache_file.parent.glob(f"{path_part}-*.npz"):
            if old != cache_file:
                with _suppress_os_error():
                    old.unlink()
    except OSError as exc:
        log.debug("frame index of %s not kept (%s): %s", index.path, cache_file.parent, exc)


class _suppress_os_error:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, OSError)


def index_frames(path, *, use_cache: bool = True) -> FrameIndex:
    """Index the frames of an (extended) XYZ file by byte offset.

    Parameters
    ----------
    path : str or Path
        The file.
    use_cache : bool, default True
        Reuse the index kept from an earlier scan of the same unchanged file, and keep
        this one for the next.  A cache directory that cannot be written only means no
        index is kept.

    Returns
    -------
    FrameIndex

    Raises
    ------
    InputFileError
        The file does not exist, is not a regular file, or is not split into frames as
        extended XYZ (the message names the frame and line).
    """
    path_text = str(path)
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
    except FileNotFoundError:
        raise InputFileError(f"input file {path_text!r} does not exist") from None
    if not os.path.isfile(resolved):
        raise InputFileError(f"input file {path_text!r} is not a regular file; name an extended XYZ file")
    if not use_cache:
        return _scan_file(path_text, stat.st_size)
    cache_file, path_part, digest = _cache_file(resolved, stat)
    cached = _load_cached(cache_file, digest, path_text, stat.st_size)
    if cached is not None:
        return cached
    index = _scan_file(path_text, stat.st_size)
    after = os.stat(resolved)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns):
        # a file changed while it was scanned is not described by this index: not kept
        _store(index, cache_file, path_part, digest)
    return index
