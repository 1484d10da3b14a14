"""Extended XYZ text of one structure, byte for byte what ASE's extxyz writer gives, faster.

ASE formats each atom's line on its own, after packing the columns into a record array;
for a few dozen atoms that is most of the cost of writing a structure.  Here the lines of
all atoms are made by one ``%`` over all values, with the line layout of each column
signature (names, kinds, widths) built once; Python's ``%`` is used on Python numbers,
which it formats exactly as the numpy scalars ASE gives it.  The comment line is made by
conversions that give the text ASE's give (the same ``str``/``json`` calls, or calls known
to give the same text, as ``str`` of a Python float for ``format`` of a numpy float).  A
structure holding anything whose text is not known to be the same (an unusual dtype, an
object ASE would warn about or refuse) is declined, and the caller writes it with ASE.

libextxyz's C writer is not used: its float format, key order and array syntax in the
comment line differ from ASE's, so its text is not the text ASE writes.

The exact behaviours followed are those of ``ase.io.extxyz.write_xyz`` (ASE 3.29):
calculator results are written under their own names (a 6-component stress as its 3x3
matrix), ``pbc`` is always the last entry unless ``info`` has one, ``Lattice`` only when
the cell is not all zero, ``move_mask`` only when ``FixAtoms``/``FixCartesian`` fix something.
"""

from __future__ import annotations

import json
import numbers
import re
from functools import lru_cache

import numpy as np

# Column name in the file of the arrays ASE renames, and the arrays it never writes as columns.
_COLUMN_NAMES = {"positions": "pos", "charges": "charge", "symbols": "species"}
_NOT_COLUMNS = frozenset(("symbols", "positions", "numbers", "species", "pos"))

# Property type and per-value format of a column, by dtype kind, as ASE writes them.
_KIND_LAYOUT = {"f": ("R", "%16.8f"), "i": ("I", "%8d"), "U": ("S", "%-2s"), "b": ("L", " %.1s")}

# Info values of these keys are matrices written flattened in Fortran order.
_FLATTENED_KEYS = frozenset(("Lattice", "virial", "stress"))

# Symbols and whole-frame formats are kept (256 of each) for frames of at most this many
# atoms: a few MB at most; a larger frame costs far more to format than to build them.
_KEPT_ATOMS = 512

# Text of the three periodic flags, by their bytes.
_PBC_TEXT = {np.array(flags, dtype=bool).tobytes(): " ".join("T" if flag else "F" for flag in flags)
             for flags in np.ndindex(2, 2, 2)}

# Items of a Voigt 6-vector (xx yy zz yz xz xy) making its 3x3 matrix, flattened.
_VOIGT_TO_FULL = np.array([0, 5, 4, 5, 1, 3, 4, 3, 2])

# A key or value with any of these is quoted (its double quotes escaped).
_NEEDS_QUOTES = re.compile(r"[ \"'{}\[\]]")


class _NotCovered(Exception):
    """Something in the structure whose text this module does not promise to match (the reason)."""


def extxyz_text(atoms) -> str | None:
    """The extended XYZ text ASE would write for ``atoms``, or None when it is not covered.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure; left unchanged.  Its calculator's results are written, as ASE does.

    Returns
    -------
    str or None
        The same text as ``ase.io.write(f, atoms, format="extxyz")`` writes, count and
        comment lines included; None when the structure holds something this writer does
        not cover (write it with ASE then).
    """
    try:
        return _text(atoms)
    except Exception:
        # declined, or something ASE would refuse too (it then says what)
        return None


def uncovered_reason(atoms) -> str | None:
    """Why :func:`extxyz_text` declines ``atoms``, or None when it covers it.

    Parameters
    ----------
    atoms : ase.Atoms
        The structure.

    Returns
    -------
    str or None
        A short reason naming the key or column, or None.
    """
    try:
        _text(atoms)
    except _NotCovered as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _text(atoms):
    if not isinstance(atoms, _ase_classes()["Atoms"]):
        raise _NotCovered(f"not an ase.Atoms but a {type(atoms).__name__}")
    per_config, per_atom = _calculator_results(atoms)
    info = _info_to_write(atoms, per_config)
    n_atoms = len(atoms)
    columns = _columns(atoms, per_atom, n_atoms)
    properties, widths, line_format, floats_only = _layout(_signature(columns, n_atoms))
    cell = atoms.cell.array
    head = f"{n_atoms}\n{_lattice(cell)} " if cell.any() else f"{n_atoms}\n"
    return f"{head}{properties} {_info_text(info)}\n" + _atom_lines(columns, widths, line_format, floats_only, n_atoms)


@lru_cache(maxsize=1)
def _ase_classes():
    # imported on first use: importing this module stays cheap
    from ase import Atoms
    from ase.constraints import FixAtoms, FixCartesian

    return {"Atoms": Atoms, "FixAtoms": FixAtoms, "FixCartesian": FixCartesian}


def _calculator_results(atoms):
    """The calculator's results that ASE writes: (per-structure, per-atom), in the results' order."""
    calc = atoms.calc
    if calc is None:
        return {}, {}
    results = getattr(calc, "results", None)
    if not isinstance(results, dict):
        raise _NotCovered(f"calculator {type(calc).__name__} has no results dict")
    config_keys, atom_keys = _result_kinds(tuple(results))
    # ASE refuses a result whose name is already taken: let it say so
    if not (atoms.info.keys().isdisjoint(config_keys) and atoms.arrays.keys().isdisjoint(atom_keys)):
        raise _NotCovered("calculator results are also in info or arrays")
    return {key: results[key] for key in config_keys}, {key: results[key] for key in atom_keys}


@lru_cache(maxsize=256)
def _result_kinds(keys):
    """The results among ``keys`` that ASE writes per structure, and per atom, in their order."""
    from ase.io.extxyz import per_atom_properties, per_config_properties

    config_keys = tuple(key for key in keys if key in per_config_properties)
    return config_keys, tuple(key for key in keys if key in per_atom_properties and key not in config_keys)


def _info_to_write(atoms, per_config):
    info = dict(atoms.info)
    info.update(per_config)
    if "stress" in info:
        stress = info["stress"]
        if not isinstance(stress, np.ndarray):
            raise _NotCovered(f"info 'stress' is a {type(stress).__name__}, not an array")
        if stress.shape == (6,):
            # ASE makes the full matrix of Voigt order xx yy zz yz xz xy before writing it
            # flattened: of a symmetric matrix, Fortran order is the rows one after the other
            info["stress"] = stress[_VOIGT_TO_FULL]
    # always written, in place of any 'pbc' of info: its text before quoting, as for a string
    info["pbc"] = _PBC_TEXT[atoms.pbc.tobytes()]
    return info


def _lattice(cell):
    # many structures share a cell: its text is kept by its bytes
    return _lattice_of_bytes(cell.astype(float, copy=False).tobytes())


@lru_cache(maxsize=1024)
def _lattice_of_bytes(cell_bytes):
    # the cell's rows one after the other (ASE writes the transpose in Fortran order), each
    # number as str() of its numpy scalar, as ASE writes it: numpy's str of a float64 is the
    # shortest round-trip text with Python's cut-offs for exponents, so str() of the Python
    # float gives the same text (checked on 400,000 random bit patterns, nan, inf, -0.0),
    # without making a numpy scalar per number
    cell = np.frombuffer(cell_bytes, dtype=float)
    return 'Lattice="' + " ".join(map(str, cell.tolist())) + '"'


def _info_text(info):
    pieces = []
    for key, value in info.items():
        # the commonest values first: format(value, "") of a str, int or float is its str()
        text = value if type(value) is str else str(value) if type(value) in (float, int) else _value_text(key, value)
        key_text = _quoted_key(key)
        pieces.append(key_text if text is None else f"{key_text}={_quoted(text)}")
    return " ".join(pieces).strip()


@lru_cache(maxsize=4096)
def _quoted_key(key):
    return _quoted(key)


def _quoted(text):
    if _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _value_text(key, value):
    """The text of one info value before quoting, None for a key written alone."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "T" if value else "F"
    if isinstance(value, np.ndarray):
        if type(value) is not np.ndarray:
            # a subclass (masked, matrix) may print and list its items its own way
            raise _NotCovered(f"info {key!r} is a {type(value).__name__}, a subclass of numpy.ndarray")
        return _array_text(key, value)
    if isinstance(value, numbers.Real):
        return f"{value}"
    if isinstance(value, (list, tuple, dict)):
        return _json_text(key, value)
    raise _NotCovered(f"info {key!r} is a {type(value).__name__}")


def _array_text(key, value):
    if key in _FLATTENED_KEYS:
        value = value.reshape(value.size, order="F")
    if value.dtype.kind in "ifb":
        if value.ndim == 0:
            # ASE writes a 0-d array as str() gives it (a 0-d bool as 'True')
            return str(value)
        if value.ndim == 1:
            return _vector_text(value)
    if value.dtype.kind not in "ifbuU":
        raise _NotCovered(f"info {key!r} is an array of dtype {value.dtype}")
    return _json_text(key, value.tolist())


def _vector_text(value):
    # ASE writes each item as format(numpy scalar, ""), which numpy does by formatting the
    # Python bool/int/float of it: the items of tolist() give the same text, faster
    kind = value.dtype.kind
    if kind == "b":
        return " ".join(["T" if item else "F" for item in value.tolist()])
    if kind == "i" or value.dtype.itemsize <= 8:
        return " ".join(map(str, value.tolist()))
    # a long double: tolist() keeps numpy scalars
    return " ".join(f"{item}" for item in value)


def _json_text(key, value):
    try:
        return "_JSON " + json.dumps(value)
    except (TypeError, ValueError):
        # ASE skips it with a warning, or fails: either way, leave it to ASE
        raise _NotCovered(f"info {key!r} does not convert to JSON") from None


def _columns(atoms, per_atom, n_atoms):
    """(ASE's name, values) of each column, in the order ASE writes them."""
    arrays = atoms.arrays
    for taken in ("symbols", "move_mask"):
        if taken in arrays:
            raise _NotCovered(f"arrays has a key {taken!r}, which ASE handles specially")
    columns = [("symbols", _symbols(arrays["numbers"], n_atoms)), ("positions", arrays["positions"])]
    move_mask = _move_mask(atoms, n_atoms)
    if move_mask is not None:
        columns.append(("move_mask", move_mask))
    columns.extend(item for item in arrays.items() if item[0] not in _NOT_COLUMNS)
    columns.extend(per_atom.items())
    return columns


def _signature(columns, n_atoms):
    # what the layout of the lines depends on; the checks of it are made once, by _layout
    signature = []
    for key, values in columns:
        if not isinstance(values, np.ndarray):
            raise _NotCovered(f"per-atom {key!r} is a {type(values).__name__}, not an array")
        if values.shape[:1] != (n_atoms,):
            raise _NotCovered(f"per-atom {key!r} has shape {values.shape}, not ({n_atoms}, ...)")
        signature.append((key, values.dtype, values.shape[1:]))
    return tuple(signature)


def _symbols(numbers_, n_atoms):
    if n_atoms == 0:
        # ASE's empty symbol list becomes a float array: the species column is typed R
        return np.zeros(0)
    if n_atoms > _KEPT_ATOMS:
        return _symbols_of_numbers(numbers_)
    # most structures share their atomic numbers with others: their symbols are kept
    return _kept_symbols(numbers_.dtype.str, numbers_.tobytes())


@lru_cache(maxsize=256)
def _kept_symbols(dtype, numbers_bytes):
    return _symbols_of_numbers(np.frombuffer(numbers_bytes, dtype=dtype))


def _symbols_of_numbers(numbers_):
    from ase.data import chemical_symbols

    if numbers_.dtype.kind not in "iu" or numbers_.min() < 0 or numbers_.max() >= len(chemical_symbols):
        raise _NotCovered("atomic numbers are not whole numbers of known elements")
    return np.array(chemical_symbols)[numbers_]


def _move_mask(atoms, n_atoms):
    """The move_mask column ASE writes for FixAtoms/FixCartesian (True: free), None when all is free."""
    constraints = atoms.constraints
    if not constraints:
        return None
    classes = _ase_classes()
    FixAtoms, FixCartesian = classes["FixAtoms"], classes["FixCartesian"]
    fixes = [c for c in constraints if isinstance(c, (FixAtoms, FixCartesian))]
    if not fixes:
        return None
    per_direction = any(isinstance(c, FixCartesian) for c in fixes)
    mask = np.ones((n_atoms, 3) if per_direction else (n_atoms,), dtype=bool)
    for constraint in fixes:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = False
        else:
            mask[constraint.index] &= ~constraint.mask
    return None if mask.all() else mask


@lru_cache(maxsize=512)
def _layout(signature):
    """Properties string, the number of values of each column, and the format of one atom's line.

    Raises _NotCovered for a column whose dtype or shape ASE's writer does not take, or
    takes in a way not followed here.
    """
    names, widths, formats = [], [], []
    for key, dtype, trailing_shape in signature:
        kind = dtype.kind
        if kind not in _KIND_LAYOUT or (kind == "f" and dtype.itemsize not in (4, 8)):
            raise _NotCovered(f"per-atom {key!r} has dtype {dtype}")
        if len(trailing_shape) > 1 or trailing_shape == (0,):
            raise _NotCovered(f"per-atom {key!r} has {len(trailing_shape) + 1} dimensions or no columns")
        width = trailing_shape[0] if trailing_shape else 1
        property_type, value_format = _KIND_LAYOUT[kind]
        names.append(f"{_COLUMN_NAMES.get(key, key)}:{property_type}:{width}")
        widths.append(width)
        formats.extend([value_format] * width)
    _key, dtype, trailing_shape = signature[1]
    if dtype.kind != "f" or trailing_shape != (3,):
        raise _NotCovered("positions are not an (N, 3) float array")
    _refuse_clashing_fields(signature)
    floats_only = signature[0][1].kind == "U" and all(dtype.kind == "f" for _, dtype, _ in signature[1:])
    return "Properties=" + ":".join(names), tuple(widths), " ".join(formats) + "\n", floats_only


def _refuse_clashing_fields(signature):
    # ASE packs the columns into a record array with a field per column ('forces0',
    # 'forces1', ... for a wide one): a name taken twice makes it fail
    fields = []
    for key, _, trailing_shape in signature:
        width = trailing_shape[0] if trailing_shape else 1
        fields.extend([key] if width == 1 else [f"{key}{c}" for c in range(width)])
    if len(set(fields)) != len(fields):
        raise _NotCovered("two columns map to the same record field name")


def _atom_lines(columns, widths, line_format, floats_only, n_atoms):
    if n_atoms == 0:
        return ""
    if floats_only:
        # the commonest case (symbols, then float columns): the symbols go into the
        # format, the numbers are formatted from one list of Python floats
        values = np.concatenate([array.reshape(n_atoms, width)
                                 for (_, array), width in zip(columns[1:], widths[1:], strict=True)], axis=1)
        return _frame_format(columns[0][1], line_format) % tuple(values.ravel().tolist())
    # an object array turns each value into the Python int/float/bool/str that % formats
    # exactly as it formats the numpy scalar ASE passes
    values = np.empty((n_atoms, sum(widths)), dtype=object)
    start = 0
    for (_, array), width in zip(columns, widths, strict=True):
        values[:, start:start + width] = array.reshape(n_atoms, width)
        start += width
    return (line_format * n_atoms) % tuple(values.ravel().tolist())


def _frame_format(symbols, line_format):
    if len(symbols) > _KEPT_ATOMS:
        return _symbols_in_format(symbols.tolist(), line_format)
    return _cached_frame_format(symbols.dtype.str, symbols.tobytes(), line_format)


@lru_cache(maxsize=256)
def _cached_frame_format(dtype, symbols_bytes, line_format):
    return _symbols_in_format(np.frombuffer(symbols_bytes, dtype=dtype).tolist(), line_format)


def _symbols_in_format(symbols, line_format):
    # the line format starts with the symbol's "%-2s": a symbol padded to 2 in its place
    # (chemical symbols hold no '%')
    rest = line_format[len("%-2s"):]
    return "".join([f"{symbol:<2}{rest}" for symbol in symbols])
