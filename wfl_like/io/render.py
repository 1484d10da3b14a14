"""Structures rendered to the text of their output file, and checked to read back.

An output is rendered before it is journaled or written, so that one the file format
cannot hold (a key that is not a string, a newline inside a value) is a failed item,
named with the key and the problem, instead of a file that cannot be read back.

Extended XYZ text is made by :mod:`wfl_like.io.fastwrite` where it covers the structure
(the same bytes as ASE's writer, several times faster) and by ASE otherwise; the
environment variable ``WFL_LIKE_EXTXYZ_WRITER`` (``auto``, ``ase``, ``fast``) picks one for
debugging.  Rendering depends on nothing but the structure, the write options and that
variable, so it may run in any worker process.
"""

import io as _io
import os
import re
from functools import lru_cache

import numpy as np

from wfl_like.io.fastwrite import extxyz_text, uncovered_reason
from wfl_like.locations import LOC_KEY

# Keys and string values made only of these are written and read back as they are by
# extended XYZ: no quoting, no escaping.  Anything else is checked by parsing the
# comment line that was written.
_SAFE = re.compile(r"[A-Za-z0-9_.+\-/@]+")

# The location this package writes (" / 2 / 0"): quoted by the writer, read back as it is.
_LOCATION = re.compile(r"( / \d+)+")

# A per-atom string is one column of its line: empty or with white space, it shifts the rest.
_WHITE_SPACE = re.compile(r"\s")

EXTXYZ = "extxyz"

# Which writer makes extended XYZ text: "auto" (the fast one where it covers the structure,
# ASE's otherwise), "ase" (always ASE's, to rule the fast one out), "fast" (only the fast
# one: a structure it does not cover fails, naming what it lacks).
WRITER_ENV = "WFL_LIKE_EXTXYZ_WRITER"
_WRITERS = ("auto", "ase", "fast")


class UnwritableOutput(ValueError):
    """A structure that its output file's format cannot hold (the message says which key and why)."""


def render(atoms, write_kwargs):
    """The text that writing ``atoms`` adds to its output file, checked to read back.

    Parameters
    ----------
    atoms : Atoms
        With its location and tags already in ``info``.
    write_kwargs : dict
        For :func:`ase.io.write`, ``format`` among them.

    Raises
    ------
    UnwritableOutput
        The writer refused the structure, or what it wrote would not read back.
    """
    _check_keys(atoms)
    text = _fast_text(atoms, write_kwargs)
    if text is None:
        text = _ase_text(atoms, write_kwargs)
    _check_text(atoms, text, write_kwargs.get("format"))
    return text


def extxyz_writer() -> str:
    """The extended XYZ writer chosen by the environment variable ``WFL_LIKE_EXTXYZ_WRITER``.

    Returns
    -------
    str
        ``"auto"`` (the default), ``"ase"`` or ``"fast"``.

    Raises
    ------
    ValueError
        The variable holds something else.
    """
    setting = os.environ.get(WRITER_ENV)
    if setting is None:
        return "auto"
    choice = setting.strip().lower() or "auto"
    if choice not in _WRITERS:
        raise ValueError(f"{WRITER_ENV}={os.environ[WRITER_ENV]!r} is not one of {', '.join(_WRITERS)}; "
                         f"unset it to let the fast writer take the structures it covers")
    return choice


def _fast_text(atoms, write_kwargs):
    choice = extxyz_writer()
    # only plain extended XYZ: any other writer option is ASE's to apply
    if choice == "ase" or write_kwargs.get("format") != EXTXYZ or len(write_kwargs) != 1:
        return None
    text = extxyz_text(atoms)
    if text is None and choice == "fast":
        raise UnwritableOutput(f"the fast extended XYZ writer does not cover it ({uncovered_reason(atoms)}) "
                               f"and {WRITER_ENV}=fast; set it to auto to write such structures with ASE")
    return text


def _ase_text(atoms, write_kwargs):
    import ase.io

    buffer = _io.StringIO()
    try:
        ase.io.write(buffer, atoms, **write_kwargs, parallel=False)
    except Exception as exc:
        raise UnwritableOutput(f"the {write_kwargs.get('format')} writer refused it: "
                               f"{type(exc).__name__}: {exc}") from None
    return buffer.getvalue()


def _check_keys(atoms):
    for key in atoms.info:
        if not isinstance(key, str):
            raise UnwritableOutput(f"info key {key!r} is a {type(key).__name__}, not a string")
    for key in atoms.arrays:
        if not isinstance(key, str):
            raise UnwritableOutput(f"arrays key {key!r} is a {type(key).__name__}, not a string")


def _check_text(atoms, text, file_format):
    # a structure of N atoms is N + 2 lines: the count, the comment line, one per atom
    if text.count("\n") != len(atoms) + 2 or not text.endswith("\n"):
        raise UnwritableOutput(_line_break_problem(atoms))
    if file_format != EXTXYZ:
        return
    for key, values in atoms.arrays.items():
        if values.dtype.kind not in "US":
            continue
        bad = next((v for v in map(str, values.ravel()) if not v or _WHITE_SPACE.search(v)), None)
        if bad is not None:
            raise UnwritableOutput(f"per-atom string array {key!r} holds {_show(bad)}, which a column of "
                                   f"extended XYZ cannot hold (empty, or with white space)")
    unsafe = _unsafe_entries(atoms)
    if unsafe[0] or unsafe[1]:
        _check_comment_line(text.split("\n", 2)[1], unsafe, atoms)


def _line_break_problem(atoms):
    for key, value in atoms.info.items():
        if "\n" in key or "\r" in key:
            return f"info key {_show(key)} holds a line break"
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            return f"info key {key!r} holds a string with a line break: {_show(value)}"
    for key in atoms.arrays:
        if "\n" in key or "\r" in key:
            return f"arrays key {_show(key)} holds a line break"
    return "its text does not have one line per atom plus two (a line break inside a key or value)"


def _unsafe_entries(atoms):
    """Info keys whose key or string value needs quoting or escaping, and unsafe array names."""
    info = [key for key, value in atoms.info.items()
            if not _safe_name(key) or (_unsafe_value(value) and not _is_location(key, value))]
    arrays = [key for key in atoms.arrays if not _safe_name(key)]
    return info, arrays


@lru_cache(maxsize=4096)
def _safe_name(key):
    # the same few keys come with every structure: each is matched once
    return _SAFE.fullmatch(key) is not None


def _is_location(key, value):
    # every output written to a file has one: checking it by a parse would double the cost
    return key == LOC_KEY and isinstance(value, str) and _LOCATION.fullmatch(value) is not None


def _unsafe_value(value):
    if isinstance(value, str):
        return not _SAFE.fullmatch(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        # a sequence of strings is written space-separated: it must at least parse back
        return any(isinstance(item, (str, np.str_)) for item in np.ravel(np.asarray(value, dtype=object)))
    return isinstance(value, dict)


def _check_comment_line(line, unsafe, atoms):
    from ase.io.extxyz import key_val_str_to_dict

    info_keys, array_keys = unsafe
    if not info_keys and not array_keys:
        return
    try:
        parsed = key_val_str_to_dict(line)
    except Exception as exc:
        raise UnwritableOutput(f"its comment line does not parse back ({type(exc).__name__}: {exc}); "
                               f"check the info keys {info_keys}") from None
    for key in info_keys:
        value = atoms.info[key]
        if key not in parsed:
            raise UnwritableOutput(f"info key {_show(key)} does not read back from extended XYZ (a key with "
                                   f"white space, quotes, '=' or backslashes, or a value that breaks the line)")
        if isinstance(value, str) and not _same_string(parsed[key], value):
            raise UnwritableOutput(f"info key {key!r} holds {_show(value)}, which reads back from extended "
                                   f"XYZ as {_show(parsed[key])} (empty, backslashes or quotes)")
    columns = str(parsed.get("Properties", "")).split(":")[0::3]
    for key in array_keys:
        if key not in columns:
            raise UnwritableOutput(f"arrays key {_show(key)} cannot be an extended XYZ column name "
                                   f"(':', white space, '=' or quotes)")


def _same_string(parsed, value):
    return isinstance(parsed, (str, np.str_)) and str(parsed) == value


def _show(text, limit=60):
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")
