"""Reading the extended-XYZ frames of a byte range into ``ase.Atoms``, at C speed where possible.

Workers of a run over file inputs get byte ranges (see :mod:`wfl_like.io.frames`) and
parse the frames themselves.  The structures they get are exactly those of
:func:`wfl_like.io.iread` (ASE's extended-XYZ reader): the same numbers, positions,
cell, pbc, ``info`` (keys, Python and numpy types, values), ``arrays`` (names, dtypes,
values), calculator results and constraints.

Interface
---------
``read_frames(path, byte_start, byte_end, first_frame=i, first_line=index.line(i)) -> list[Atoms]``
    The frames in bytes ``[byte_start, byte_end)`` of ``path``, in order; the range
    must hold whole frames (``FrameIndex.offsets`` gives their bounds).  The optional
    frame and line numbers only make error messages point into the file.
``parse_frames(data, source=...) -> list[Atoms]``
    The same for frames already in memory (``bytes``), e.g. read once to be hashed too.

How
---
libextxyz's C parser (the ``extxyz`` package, when installed) parses the atom lines;
the comment line is split here into the same ``info`` values ASE's parser gives, and
the ``Atoms`` are assembled as ASE assembles them (ASE's own helpers build the
calculator results and ``arrays``).  A frame that this cannot make identical (a comment
line with backslash escapes or other rare syntax, numbers ASE would not read, non-ASCII
atom lines, ``VEC`` lines, zero atoms, anything the C parser refuses) is parsed by ASE
instead, alone: the choice costs a few byte searches per frame, and a frame is parsed
twice only when the C parser refuses it.

``WFL_LIKE_EXTXYZ_READER`` chooses the parser: ``auto`` (default; C where installed),
``c`` (C, an error when ``extxyz`` is missing; frames it cannot make identical still go
to ASE), ``ase`` (ASE for every frame, for debugging).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import io
import json
import locale
import os
import re
from functools import lru_cache

import numpy as np

from wfl_like.errors import InputFileError
from wfl_like.io.assembly import assemble
from wfl_like.io.frames import refuse_lone_cr, scan_frames

__all__ = ["READER_ENV", "parse_frames", "read_frames", "reader_mode"]

READER_ENV = "WFL_LIKE_EXTXYZ_READER"
_MODES = ("auto", "c", "ase")


def reader_mode() -> str:
    """The parser chosen by ``$WFL_LIKE_EXTXYZ_READER``: ``"auto"``, ``"c"`` or ``"ase"``.

    Raises
    ------
    ValueError
        The variable holds something else.
    """
    mode = os.environ.get(READER_ENV, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{READER_ENV}={os.environ[READER_ENV]!r} is not one of {', '.join(_MODES)}; unset it or "
                         f"choose one")
    return mode


def read_frames(path, byte_start: int, byte_end: int, *, first_frame: int | None = None,
                first_line: int | None = None) -> list:
    """Read the extended-XYZ frames in bytes ``[byte_start, byte_end)`` of a file.

    Parameters
    ----------
    path : str or Path
        The file.
    byte_start, byte_end : int
        A range of whole frames, such as ``index.offsets[i]`` to ``index.offsets[j]``.
    first_frame, first_line : int, optional
        Frame number and 1-based line number of the frame at ``byte_start``, for error
        messages: ``i`` and ``index.line(i)`` of its :class:`~wfl_like.io.frames.FrameIndex`
        (without them, they count from the start of the range and say so).

    Returns
    -------
    list of ase.Atoms
        Equal in every respect to what ``ase.io.read(path, index=..., parallel=False)``
        gives for those frames.

    Raises
    ------
    InputFileError
        The file is missing, the range does not hold whole frames, or a frame cannot be
        parsed (the message names the file, frame and line).
    """
    if byte_start < 0 or byte_end < byte_start:
        raise ValueError(f"byte range [{byte_start}, {byte_end}) of {str(path)!r} is not a range; pass offsets of "
                         f"its frame index")
    try:
        with open(path, "rb") as handle:
            handle.seek(byte_start)
            data = handle.read(byte_end - byte_start)
    except FileNotFoundError:
        raise InputFileError(f"input file {str(path)!r} does not exist") from None
    if len(data) != byte_end - byte_start:
        raise InputFileError(f"input file {str(path)!r} ends at byte {byte_start + len(data)}, inside the range "
                             f"[{byte_start}, {byte_end}) to read: it changed since it was indexed; run again")
    if first_frame is None:
        source = f"{path} (bytes from {byte_start})"
        first_frame, first_line = 0, 1
    else:
        source = str(path)
    return parse_frames(data, source=source, first_frame=first_frame, first_line=first_line or 1)


def parse_frames(data: bytes, *, source: str = "<bytes>", first_frame: int = 0, first_line: int = 1) -> list:
    """Parse whole extended-XYZ frames held in memory.

    Parameters
    ----------
    data : bytes
        Whole frames, as in the file.
    source : str
        The file they came from, for error messages.
    first_frame, first_line : int
        Frame number and 1-based line number of the first frame, for error messages.

    Returns
    -------
    list of ase.Atoms

    Raises
    ------
    InputFileError
        A frame cannot be parsed; the message names ``source``, the frame and the line.
    """
    return [atoms for atoms, _ in _parse(data, source, first_frame, first_line, reader_mode())]


def _parse(data, source, first_frame, first_line, mode):
    """``(Atoms, parsed_by_c)`` for each frame of ``data``."""
    parser = None if mode == "ase" else _c_parser()
    if mode == "c" and parser is None:
        raise RuntimeError(f"{READER_ENV}=c but libextxyz's C parser cannot be used here (is the 'extxyz' package "
                           f"installed?); install it or set {READER_ENV}=auto")
    # the index refuses such files; bytes given here are checked alike, as the C path
    # would read past a carriage return that ASE takes for a line end
    refuse_lone_cr(data, source)
    results, seen = [], {}
    with (_MemoryFile(data) if parser is not None else _NoFile()) as memory:
        for frame, span in enumerate(scan_frames(data, source, first_frame=first_frame, first_line=first_line),
                                     start=first_frame):
            atoms = None
            if parser is not None:
                try:
                    atoms = _parse_with_c(parser, memory, data, span, seen)
                except _TooFewValues as exc:
                    raise InputFileError(f"could not read {source!r} at frame {frame} (line {span.line}): its "
                                         f"Properties declare {exc.width} values per atom, more than its atom lines "
                                         f"hold; check that the file is complete and in extended XYZ format") from None
            if atoms is not None:
                results.append((atoms, True))
            else:
                results.append((_parse_with_ase(data[span.start:span.end], source, frame, span.line), False))
    return results


def _parse_with_ase(frame_bytes, source, frame, line):
    import ase.io

    # as ase.io.read opens a path: text in the locale's encoding, universal newlines
    text = io.TextIOWrapper(io.BytesIO(frame_bytes), encoding="locale")
    try:
        return ase.io.read(text, index=0, format="extxyz", parallel=False)
    except Exception as exc:
        message = str(exc)
        message = message if len(message) <= 300 else message[:300] + "..."
        raise InputFileError(f"could not read {source!r} at frame {frame} (line {line}) ({type(exc).__name__}: "
                             f"{message}); check that the file is complete and in extended XYZ format") from exc


# --- the C parser ---------------------------------------------------------------------


class _CParser:
    """libextxyz's frame reader, and the libc calls that let it read from memory."""

    def __init__(self, cextxyz, libc, ase_helpers):
        self.cextxyz, self.libc, self.ase = cextxyz, libc, ase_helpers
        self.error = cextxyz.ExtXYZError

    def read(self, address, properties):
        """``(n_atoms, arrays)`` of the frame at the FILE* ``address``'s position."""
        n_atoms, _, arrays = self.cextxyz.read_frame_dicts(self.cextxyz.FILE_ptr(address),
                                                           comment="Properties=" + properties)
        return n_atoms, arrays


@lru_cache(maxsize=1)
def _c_parser():
    """The C parser, or None where it cannot be used (not installed, no fmemopen)."""
    try:
        from ase.io import extxyz as ase_extxyz
        from extxyz import cextxyz

        helpers = {name: getattr(ase_extxyz, name) for name in
                   ("parse_properties", "SPECIAL_3_3_KEYS", "UNPROCESSED_KEYS")}
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        for name, restype, argtypes in (("fmemopen", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t,
                                                                        ctypes.c_char_p]),
                                        ("fseek", ctypes.c_int, [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]),
                                        ("ftell", ctypes.c_long, [ctypes.c_void_p]),
                                        ("fclose", ctypes.c_int, [ctypes.c_void_p])):
            function = getattr(libc, name)
            function.restype, function.argtypes = restype, argtypes
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    return _CParser(cextxyz, libc, helpers)


class _MemoryFile:
    """A C ``FILE *`` reading a bytes object (``fmemopen``), closed on exit."""

    def __init__(self, data):
        self._buffer = ctypes.create_string_buffer(data, len(data))
        self.size = len(data)
        self.libc = _c_parser().libc
        self.address = None

    def __enter__(self):
        if self.size:
            self.address = self.libc.fmemopen(self._buffer, self.size, b"r")
        return self

    def __exit__(self, *exc):
        if self.address:
            self.libc.fclose(self.address)
            self.address = None

    def seek(self, position):
        return self.address is not None and self.libc.fseek(self.address, position, 0) == 0

    def tell(self):
        return self.libc.ftell(self.address)


class _NoFile:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# Bytes an atom line may hold for the C parser to read it as ASE does: printable ASCII and
# spaces, no quotes or backslashes (ASE splits on whitespace only, libextxyz also reads quotes).
_PLAIN_ATOM_BYTES = bytes(b for b in range(0x21, 0x7f) if b not in b"\"'\\") + b" \t\r\n"
# Numbers libextxyz reads that Python's float() refuses (hex, Fortran exponents): a digit or
# point followed by one of these letters (a string column such as "2p" is left to ASE too).
_FOREIGN_REAL_LETTERS = b"dDxXpP"
_FOREIGN_REAL = re.compile(rb"[0-9.][dDxXpP]")
# Logical words libextxyz reads that ASE's reader does not take as true.
_FOREIGN_LOGICAL = re.compile(rb"(?<!\S)(?:TRUE|FALSE|true|false)(?!\S)")
# Integers that may not fit the 32 bits of an integer column (libextxyz wraps them).
_LONG_INTEGER = re.compile(rb"\s[+-]?[0-9]{10,}(?:\s|\Z)")
_ALL_BYTES = bytes(range(256))
# A header line whose count libextxyz reads as Python does: digits only, and fewer than 2**31.
_PLAIN_HEADER = re.compile(rb"[ \t]*[1-9][0-9]{0,8}[ \t]*\r?\n")
_PROPERTY = r"[A-Za-z_][A-Za-z0-9_]*:[RISL]:[1-9][0-9]*"
_PLAIN_PROPERTIES = re.compile(rf"{_PROPERTY}(?::{_PROPERTY})*", re.ASCII)
_DEFAULT_PROPERTIES = "species:S:1:pos:R:3"
# Properties declaring more values per atom than this are checked against the atom lines' size.
_CHECKED_WIDTH = 256
_C_DTYPES = {"R": np.dtype(np.float64), "I": np.dtype(np.int32), "L": np.dtype(bool), "S": None}


def _parse_with_c(parser, memory, data, span, seen):
    """The frame as ASE reads it, parsed by libextxyz; None where that may differ."""
    if span.n_vec or span.n_atoms == 0 or memory.address is None:
        return None
    if not _PLAIN_HEADER.fullmatch(data, span.start, span.comment_start):
        # libextxyz reads the count its own way: "0_2" (2 to Python) is 0 to it, and it
        # crashes the process on a frame it reads as empty
        return None
    info = _comment_info(data[span.comment_start:span.comment_end], parser.ase, seen)
    if info is None:
        return None
    properties_text = info.pop("Properties", _DEFAULT_PROPERTIES)
    if not isinstance(properties_text, str) or not _PLAIN_PROPERTIES.fullmatch(properties_text):
        return None
    width = _values_per_atom(properties_text)
    if width > _CHECKED_WIDTH and 2 * width * span.n_atoms > span.end - span.comment_end:
        # a value and its separator take two bytes at least, so some atom line is short of
        # values and ASE would refuse the frame, after building a record type of this many
        # fields (hours for a width of 2**31, which also wraps libextxyz's count)
        raise _TooFewValues(width)
    try:
        properties, names = _parsed_properties(properties_text, parser.ase["parse_properties"])
    except ValueError:
        return None
    types = properties_text.split(":")[1::3]
    if len(set(names)) != len(names) or not _plain_atom_lines(data, span, types):
        return None
    if not memory.seek(span.start):
        return None
    try:
        n_atoms, c_arrays = parser.read(memory.address, properties_text)
    except (parser.error, EOFError, ValueError):
        return None
    if n_atoms != span.n_atoms or memory.tell() != span.end or set(c_arrays) != set(names):
        return None
    arrays = _ase_arrays(c_arrays, names, types, properties, n_atoms)
    if arrays is None:
        return None
    try:
        return assemble(info, arrays, properties["move_mask"][1] if "move_mask" in arrays else None)
    except Exception:
        # whatever ASE's assembly would make of this frame (an error of any kind, such as
        # the AttributeError of numbers in the species column), ASE makes it
        return None


class _TooFewValues(Exception):
    """The atom lines cannot hold the values the Properties declare (``width`` per atom)."""

    def __init__(self, width):
        super().__init__(width)
        self.width = width


@lru_cache(maxsize=256)
def _values_per_atom(properties_text):
    return sum(int(count) for count in properties_text.split(":")[2::3])


@lru_cache(maxsize=256)
def _parsed_properties(text, parse_properties):
    """ASE's reading of a Properties string (kept: the result is only read)."""
    properties, names, _, _ = parse_properties(text)
    return properties, tuple(names)


def _plain_atom_lines(data, span, types):
    atoms_start = data.index(b"\n", span.comment_end) + 1
    block = data[atoms_start:span.end]
    if block.translate(None, _PLAIN_ATOM_BYTES):
        return False
    if "R" in types and _has_any(block, _FOREIGN_REAL_LETTERS) and _FOREIGN_REAL.search(block):
        return False
    if "L" in types and (b"RUE" in block or b"rue" in block or b"ALSE" in block or b"alse" in block) \
            and _FOREIGN_LOGICAL.search(block):
        return False
    # (a pattern that starts with a lookbehind is slow to search: the line start is made a space)
    return not ("I" in types and _LONG_INTEGER.search(b" " + block))


@lru_cache(maxsize=64)
def _all_but(letters):
    return bytes(b for b in _ALL_BYTES if b not in letters)


def _has_any(block, letters):
    """Whether ``block`` holds any of the bytes ``letters`` (one pass in C)."""
    return bool(block.translate(None, _all_but(letters)))


def _ase_arrays(c_arrays, names, types, properties, n_atoms):
    """The per-atom columns under ASE's names, with the dtypes and shapes ASE's reader gives them."""
    arrays = {}
    for name, kind in zip(names, types):
        ase_name, columns = properties[name]
        value = c_arrays[name]
        shape = (n_atoms,) if columns == 1 else (n_atoms, columns)
        if value.shape != shape:
            return None
        wanted = _C_DTYPES[kind]
        if wanted is None:
            if value.dtype.kind != "U":
                return None
            # ASE reads string columns into object arrays of str
            value = value.astype(object)
        elif value.dtype != wanted:
            return None
        if value.ndim == 2:
            # ASE stacks the columns and transposes: its multi-column arrays are Fortran-ordered
            value = np.asfortranarray(value)
        arrays[ase_name] = value
    return arrays


# --- the comment line -----------------------------------------------------------------

# One key=value pair of the plain syntax that ASE's character-by-character parser and this
# one split alike: a bare key, and a bare value or one delimited value ("...", '...',
# {...}, [...]) without backslashes; a key without a value means True.
_BARE = r"[^\s=\"'{}\[\]\\]+"
# (an empty delimited value makes ASE's parser take the next pair as its text: left to ASE)
_PAIR = re.compile(rf"""({_BARE})(?:\s*=\s*("[^"\\]+"|'[^'\\]+'|\{{[^}}\\]+\}}|\[[^\]\\]+\]|{_BARE}))?(?:\s+|$)""")
_PAIRS = re.compile(rf"(?:{_PAIR.pattern})*")
_DELIMITERS = frozenset("\"'{[")
_WORDS = re.compile(r"[^\s,]+")
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# What int() or float() might take (a superset: a word outside it is surely no number).
_NUMBER_LIKE = re.compile(r"[+-]?(?:[0-9_]+\.?[0-9_]*|\.[0-9_]+)(?:[eE][+-]?[0-9_]+)?|[+-]?(?:nan|inf|infinity)",
                          re.ASCII | re.IGNORECASE)
_NUMBERS_LIKE = re.compile(rf"[\s,]*(?:(?:{_NUMBER_LIKE.pattern})[\s,]+)*(?:{_NUMBER_LIKE.pattern})?[\s,]*",
                           re.ASCII | re.IGNORECASE)
_BOOL_WORDS = {"T": True, "F": False, "true": True, "false": False, "True": True, "False": False, "TRUE": True,
               "FALSE": False}
_INT64 = np.iinfo(np.int64)
_SEEN_LIMIT = 4096


@lru_cache(maxsize=1)
def _locale_is_utf8():
    return locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"


def _comment_info(raw, ase_helpers, seen):
    """``info`` of a comment line as ASE's parser gives it, or None for syntax left to ASE.

    ``seen`` maps ``(key, text)`` to values already converted (a lattice or Properties
    string repeats frame after frame); arrays and lists from it are copied.
    """
    if raw.isascii():
        text = raw.decode("ascii")
    elif _locale_is_utf8():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        return None
    line = text.strip()
    if not _PAIRS.fullmatch(line):
        return None
    info = {}
    try:
        # the line is wholly pairs, so findall meets them one after the other
        for key, value in _PAIR.findall(line):
            if not value:
                value = "T"
            elif value[0] in _DELIMITERS:
                value = value[1:-1]
            known = seen.get((key, value))
            if known is None:
                converted = _info_value(key, value, ase_helpers)
                known = converted, _copier(converted)
                if len(seen) < _SEEN_LIMIT:
                    seen[key, value] = known
            converted, copier = known
            info[key] = converted if copier is None else copier(converted)
    except (ValueError, OverflowError, TypeError):
        return None
    return info


def _copy_keeping_order(array):
    # ASE's 3x3 info values are Fortran-ordered: a copy keeps what the parser made
    return array.copy(order="K")


def _copier(value):
    """How to copy a converted value for another frame, so that no two frames share a
    mutable object (ASE's parser makes each anew): None for immutable values."""
    if isinstance(value, np.ndarray):
        return _copy_keeping_order
    if isinstance(value, list) and all(type(item) in (bool, int, float, str) for item in value):
        return list.copy
    if isinstance(value, (list, dict)):
        # _JSON text: nested lists and dicts
        return copy.deepcopy
    return None


def _info_value(key, value, ase_helpers):
    """The value ASE's comment-line parser makes of the text ``value`` of ``key``."""
    if key.lower() in ase_helpers["UNPROCESSED_KEYS"]:
        return value
    special = key in ase_helpers["SPECIAL_3_3_KEYS"]
    words = _WORDS.findall(value)
    may_be_numbers = True
    if value.isascii():
        if len(words) == 1 and not special:
            # one word: the common cases without numpy's parsing
            word = words[0]
            if _INT.fullmatch(word):
                number = int(word)
                if _INT64.min <= number <= _INT64.max:
                    return np.int64(number)
            elif _FLOAT.fullmatch(word):
                return np.float64(float(word))
        # a word no number parser takes spares the two failing attempts below
        may_be_numbers = _NUMBERS_LIKE.fullmatch(value) is not None
    return _info_value_as_ase(key, value, words, special, may_be_numbers)


def _info_value_as_ase(key, value, words, special, may_be_numbers):
    """ASE's conversion of a comment-line value: numbers (int before float), 3x3 matrices of
    the special keys, logical words, ``_JSON`` text; otherwise the text itself."""
    if may_be_numbers:
        try:
            try:
                if "." in value or "e" in value or "E" in value:
                    raise ValueError  # no integer has these; numpy would refuse them too
                number = np.array(words, dtype=int)
            except (ValueError, OverflowError):
                number = np.array(words, dtype=float)
            value = number[0] if len(number) == 1 else number
        except (ValueError, OverflowError):
            pass
    if special:
        if not isinstance(value, np.ndarray) or value.shape != (9,):
            raise ValueError(f"info item {key} is not 9 numbers")
        value = np.array(value).reshape((3, 3), order="F")
    if isinstance(value, str):
        try:
            logical = [_BOOL_WORDS[word] for word in words]
            value = logical[0] if len(logical) == 1 else logical
        except KeyError:
            if value.startswith("_JSON "):
                decoded = json.loads(value.replace("_JSON ", "", 1))
                value = np.array(decoded)
                if value.dtype.kind not in ("i", "f", "b"):
                    value = decoded
    return value
