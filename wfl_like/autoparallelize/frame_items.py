"""Items that are frames of input files, moved as byte ranges instead of parsed structures.

For inputs read from extended XYZ files the driver never builds an ``Atoms``: it indexes
the frames of each file by byte offset (:func:`frame_items`), and a chunk's items are
:class:`FrameItem` s.  The worker reads and parses its frames itself, runs the operation,
and renders the outputs to text
(:mod:`~wfl_like.autoparallelize.workers.frames_task`); the driver only writes that
text, in input order.
"""

import contextlib
import hashlib
import mmap
import os
import re
from dataclasses import dataclass

import numpy as np

from wfl_like.errors import InputFileError
from wfl_like.locations import LOC_KEY, parse_location


@dataclass(frozen=True)
class FrameItem:
    """One frame of an input file, by where its bytes lie.

    Attributes
    ----------
    path : str
        The file, as the worker opens it.
    start, end : int
        Byte offsets: the frame is ``file[start:end]``.
    location : tuple of int
        Its place in the inputs (relative to the ConfigSet being iterated), as a
        ConfigSet iteration would give it: the location stored in the frame, else its
        frame number, preceded by the file's number when the set reads several files.
    digest : bytes or None
        A hash of the frame's raw bytes, computed by the driver when a journal is kept
        (None otherwise): whatever the file holds for the frame (stored energies,
        forces, info) is part of the item's identity.
    """

    path: str
    start: int
    end: int
    location: tuple
    digest: bytes = None

    def identity(self):
        """What the cache key of this item is made of: its bytes, not its place.

        A location stored in the frame is in its bytes; one that is only the frame's
        number (and the file's) is not, so that a frame that moved (a structure inserted
        before it) is found again, its journaled text moved to its new place.
        """
        if self.digest is None:
            raise ValueError(f"frame at bytes {self.start}..{self.end} of {self.path!r} was not hashed")
        return ("frame", self.digest)


@dataclass(frozen=True)
class Unstorable:
    """What a worker returns for an output that its file cannot hold; the driver makes it a failed item.

    Attributes
    ----------
    reason : str
        One line: the exception's type and message.
    error : Exception, optional
        The exception itself (an :class:`~wfl_like.errors.OpOutputError`).
    """

    reason: str
    error: Exception = None


class FrameReadError(InputFileError):
    """A frame of an input file that a worker could not parse: it stops the whole call, as a file
    the driver could not read does."""


class FrameChangedError(FrameReadError):
    """A frame whose bytes changed between the driver hashing them and a worker reading them: the
    input file is being rewritten, and what is computed from it could not be journaled truly."""


def frame_items(frame_files, hashed=False):
    """The frames of a set of extended-XYZ files as :class:`FrameItem` s, in iteration order, lazily.

    Each file is indexed when its first frame is asked for.  A file whose frames cannot
    be told apart (a header that is not an atom count) raises before any of its frames is
    given; one cut short inside a frame gives the frames before that one, then raises,
    as reading it would.

    Parameters
    ----------
    frame_files : wfl_like.configset.FrameFiles
        From :meth:`ConfigSet.frame_files`.
    hashed : bool, default False
        Compute each frame's digest (for the journal's keys).

    Yields
    ------
    FrameItem

    Raises
    ------
    InputFileError
        A file is missing, its frames cannot be told apart, it is cut short, or a stored
        location is malformed; the message names the file and the frame.
    """
    for file_i, path in enumerate(frame_files.paths):
        prefix = (file_i,) if frame_files.numbered else ()
        yield from _frames_of_file(path, prefix, frame_files.index, hashed)


def count_frames(frame_files):
    """How many frames :func:`frame_items` gives for ``frame_files``, or None where a file cannot
    be indexed (that error is the items' own to raise)."""
    from wfl_like.io.frames import index_frames

    total = 0
    for path in frame_files.paths:
        try:
            total += len(index_frames(path).select(frame_files.index))
        except (InputFileError, OSError):
            return None
    return total


def _frames_of_file(path, prefix, selection, hashed):
    from wfl_like.io.frames import index_frames

    if not os.path.exists(path):
        raise InputFileError(f"input file {str(path)!r} does not exist")
    try:
        index = index_frames(path)
    except InputFileError:
        # the index refuses the file as a whole: walked frame by frame instead, its whole frames
        # before the break are still given (and computed), then the same kind of error
        yield from _frames_by_scan(path, prefix, selection, hashed)
        return
    absolute = os.path.abspath(path)
    offsets = index.offsets.tolist()
    selected = index.select(selection).tolist()
    if not selected:
        return
    with open(path, "rb") if hashed else contextlib.nullcontext() as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if hashed else None
        try:
            for position, frame_i in enumerate(selected):
                start, end = offsets[frame_i], offsets[frame_i + 1]
                location = index.location(frame_i) if index.has_locations else None
                digest = hashlib.blake2b(data[start:end], digest_size=32).digest() if hashed else None
                yield FrameItem(absolute, start, end, prefix + (location or (position,)), digest)
        finally:
            if data is not None:
                data.close()


def _frames_by_scan(path, prefix, selection, hashed):
    absolute = os.path.abspath(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            # an output that received no structure is written as an empty file
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # ASE scans no further than the last frame asked for: neither does this
            last = selection.stop if selection.stop is not None and selection.stop >= 0 else None
            scan = scan_frames(data, path, max_frames=last)
            for position, frame_i in enumerate(range(scan.n_frames)[selection]):
                if frame_i == scan.n_complete:
                    raise scan.error
                start, end = scan.offsets[frame_i], scan.offsets[frame_i + 1]
                location = _stored_location(data, start, path, position)
                digest = hashlib.blake2b(data[start:end], digest_size=32).digest() if hashed else None
                yield FrameItem(absolute, start, end, prefix + (location or (position,)), digest)


class FrameScan:
    """Where the frames of a file lie: ``offsets[i]..offsets[i + 1]`` is frame ``i``.

    Attributes
    ----------
    offsets : list of int
        ``n_complete + 1`` byte offsets.
    n_complete : int
        Frames that are whole.
    n_frames : int
        Frames as the reader counts them: one more than ``n_complete`` when the file ends
        inside a frame (reading that frame fails with :attr:`error`).
    error : InputFileError or None
        Why the file ends inside its last frame.
    """

    def __init__(self, offsets, error=None):
        self.offsets = offsets
        self.n_complete = len(offsets) - 1
        self.n_frames = self.n_complete + (error is not None)
        self.error = error


# Bytes searched for line ends at once: bounds the memory of a scan of a huge file.
_BLOCK = 64 << 20


def scan_frames(data, path, max_frames=None):
    """Index the frames of extended-XYZ bytes as ASE's reader splits them.

    A frame is its atom count line, a comment line, one line per atom, and up to three
    ``VEC`` lines; a blank line where a count is expected ends the file.

    :func:`wfl_like.io.frames.index_frames` indexes whole files (and keeps the index); this
    scan walks the files it refuses, so that their whole frames are still computed.

    Parameters
    ----------
    data : bytes-like
        The file's bytes (an mmap).
    path : str or Path
        For messages.
    max_frames : int, optional
        Stop after this many frames.

    Raises
    ------
    InputFileError
        A count line that is not a number of atoms, or more than three VEC lines.
    """
    size = len(data)
    line_ends = _line_ends(data)
    n_lines = len(line_ends)

    def line_start(k):
        return 0 if k == 0 else min(line_ends[k - 1] + 1, size)

    offsets, line = [0], 0
    while line < n_lines and (max_frames is None or len(offsets) - 1 < max_frames):
        header = data[line_start(line):line_ends[line]]
        if not header.strip():
            break
        frame_i = len(offsets) - 1
        try:
            n_atoms = int(header)
            if n_atoms < 0:
                raise ValueError
        except ValueError:
            raise _scan_error(path, frame_i, line, f"expected the number of atoms, found "
                                                   f"{_shorten(header.decode(errors='replace').strip())!r}") from None
        after = line + 2 + n_atoms
        if after > n_lines:
            return FrameScan(offsets, _scan_error(path, frame_i, line,
                                                  f"the file ends inside this frame of {n_atoms} atoms"))
        n_vec = 0
        while after < n_lines and data[line_start(after):line_ends[after]].lstrip().startswith(b"VEC"):
            after, n_vec = after + 1, n_vec + 1
        if n_vec > 3:
            raise _scan_error(path, frame_i, line, "more than 3 VEC lines")
        offsets.append(line_start(after) if after < n_lines else size)
        line = after
    return FrameScan(offsets)


def _line_ends(data):
    """Offsets of the end of every line (its line break, or the end of the data)."""
    # a function of its own: the array over the mmap must be gone before the mmap closes,
    # even when the scan raises
    array = np.frombuffer(data, dtype=np.uint8)
    size = len(array)
    blocks = [np.flatnonzero(array[block:block + _BLOCK] == 10) + block for block in range(0, size, _BLOCK)]
    line_ends = np.concatenate(blocks).tolist() if blocks else []
    if size and array[-1] != 10:
        line_ends.append(size)      # a last line without its line break
    return line_ends


def _scan_error(path, frame_i, line, what):
    return InputFileError(f"could not read {str(path)!r} at frame {frame_i} (line {line + 1}) (ValueError: "
                          f"{what}); check that the file is complete and in a format ASE reads")


def _shorten(text, limit=60):
    return text if len(text) <= limit else text[:limit] + "..."


# The location as OutputSpec writes it, quoted by ASE's writer: read without parsing the line.
_LOC_BYTES = LOC_KEY.encode()
_PLAIN_LOCATION = re.compile(rb'(?:^|[ \t])' + _LOC_BYTES + rb'="((?: / \d+)*)"(?=\s|$)')


# What may come before it for that: key=value pairs, each value a word or a quoted string
# without escapes, so the location surely starts a pair of its own where ASE's parser sees one
_PLAIN_TOKENS = re.compile(rb'(?:[ \t]*[^\s="\\]+=(?:"[^"\\]*"|[^\s"=\\]+))*[ \t]*')


def _stored_location(data, start, path, position):
    """The location stored in the comment line of the frame at ``start``, or None."""
    first_break = data.find(b"\n", start)
    comment_end = data.find(b"\n", first_break + 1) if first_break >= 0 else -1
    comment_end = comment_end if comment_end >= 0 else len(data)
    # most frames hold none: found without copying the line
    if first_break < 0 or data.find(_LOC_BYTES, first_break + 1, comment_end) < 0:
        return None
    line = data[first_break + 1:comment_end]
    match = _PLAIN_LOCATION.search(line)
    if (match is not None and line.count(_LOC_BYTES) == 1 and b"\\" not in line
            and _PLAIN_TOKENS.fullmatch(line, 0, match.start())):
        return tuple(int(part) for part in match.group(1).split(b" / ")[1:])
    # anything else is read as ASE reads the line
    from ase.io.extxyz import key_val_str_to_dict

    try:
        value = key_val_str_to_dict(line.decode("utf-8", errors="replace").rstrip("\r")).get(LOC_KEY)
    except Exception as exc:
        raise InputFileError(f"could not read {str(path)!r} at structure {position}: its comment line does not "
                             f"parse ({type(exc).__name__}: {_shorten(str(exc), 300)}); check that the file is "
                             f"complete and in a format ASE reads") from None
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(f"{LOC_KEY} value {value!r} is not a location of the form ' / 2 / 0'")
        return parse_location(value) or None
    except ValueError as exc:
        raise InputFileError(f"input file {str(path)!r}, structure {position}: {exc}; fix or remove that "
                             f"info entry (it is written by OutputSpec to keep the nesting)") from None
