"""Extended XYZ text of one structure, byte for byte what ASE's extxyz writer gives, faster.

ASE formats each atom's line on its own, after packing the columns into a record array;
for a few dozen atoms that is most of the cost of writing a structure.  Here the lines of
all atoms are made by one ``%`` over all values, with the line layout of each column
signature (names, kinds, widths) built once.  The comment line is made by the same
conversions ASE makes (the same ``str``/``format``/``json`` calls on the same objects), so
the text is the same; a structure holding anything whose text is not known to be the
same (an unusual dtype, an object ASE would warn about or refuse) is declined, and the
caller writes it with ASE.

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
    from ase import Atoms

    if not isinstance(atoms, Atoms):
        raise _NotCovered(f"not an ase.Atoms but a {type(atoms).__name__}")
    per_config, per_atom = _calculator_results(atoms)
    info = _info_to_write(atoms, per_config)
    n_atoms = len(atoms)
    columns = _columns(atoms, per_atom, n_atoms)
    signature = tuple((name, kind, width) for name, kind, width, _ in columns)
    properties, line_format = _layout(signature)
    head = [] if not atoms.cell.array.any() else [_lattice(atoms.cell.array)]
    comment = " ".join(head + [properties, _info_text(info)])
    return f"{n_atoms}\n{comment}\n" + _atom_lines(columns, line_format, n_atoms)


def _calculator_results(atoms):
    """The calculator's results that ASE writes: (per-structure, per-atom), in the results' order."""
    calc = atoms.calc
    if calc is None:
        return {}, {}
    per_config_properties, per_atom_properties = _result_kinds()
    results = getattr(calc, "results", None)
    if not isinstance(results, dict):
        raise _NotCovered(f"calculator {type(calc).__name__} has no results dict")
    per_config = {key: value for key, value in results.items() if key in per_config_properties}
    per_atom = {key: value for key, value in results.items()
                if key in per_atom_properties and key not in per_config}
    # ASE refuses a result whose name is already taken: let it say so
    clash = [key for key in per_config if key in atoms.info] + [key for key in per_atom if key in atoms.arrays]
    if clash:
        raise _NotCovered(f"calculator results {clash} are also in info or arrays")
    return per_config, per_atom


@lru_cache(maxsize=1)
def _result_kinds():
    """ASE's names of the results it writes per structure and per atom (sets)."""
    from ase.io.extxyz import per_atom_properties, per_config_properties

    return frozenset(per_config_properties), frozenset(per_atom_properties)


def _info_to_write(atoms, per_config):
    info = dict(atoms.info)
    info.update(per_config)
    if "stress" in info:
        stress = info["stress"]
        if not isinstance(stress, np.ndarray):
            raise _NotCovered(f"info 'stress' is a {type(stress).__name__}, not an array")
        if stress.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            info["stress"] = voigt_6_to_full_3x3_stress(stress)
    # always written, in place of any 'pbc' of info
    info["pbc"] = atoms.get_pbc()
    return info


def _lattice(cell):
    # many structures share a cell: its text is kept by its bytes
    return _lattice_of_bytes(cell.astype(float, copy=False).tobytes())


@lru_cache(maxsize=1024)
def _lattice_of_bytes(cell_bytes):
    # the cell's rows one after the other (ASE writes the transpose in Fortran order),
    # each number as str() of its numpy scalar, as ASE writes it
    cell = np.frombuffer(cell_bytes, dtype=float)
    return 'Lattice="' + " ".join(str(x) for x in cell) + '"'


def _info_text(info):
    pieces = []
    for key, value in info.items():
        text = _value_text(key, value)
        pieces.append(_quoted(key) if text is None else f"{_quoted(key)}={_quoted(text)}")
    return " ".join(pieces).strip()


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
    """(name in file, dtype kind, number of columns, values as (n_atoms, width) array) of each column."""
    arrays = atoms.arrays
    for taken in ("symbols", "move_mask"):
        if taken in arrays:
            raise _NotCovered(f"arrays has a key {taken!r}, which ASE handles specially")
    positions = arrays["positions"]
    if positions.shape != (n_atoms, 3) or positions.dtype.kind != "f":
        raise _NotCovered("positions are not an (N, 3) float array")
    symbols = _symbols(atoms, n_atoms)
    columns = [("species", symbols.dtype.kind, 1, symbols.reshape(n_atoms, 1)),
               _column("positions", positions, n_atoms)]
    move_mask = _move_mask(atoms, n_atoms)
    if move_mask is not None:
        columns.append(_column("move_mask", move_mask, n_atoms))
    for key, values in arrays.items():
        if key not in _NOT_COLUMNS:
            columns.append(_column(key, values, n_atoms))
    for key, values in per_atom.items():
        columns.append(_column(key, values, n_atoms))
    _refuse_clashing_fields(["symbols", "positions"] + (["move_mask"] if move_mask is not None else [])
                            + [key for key in arrays if key not in _NOT_COLUMNS] + list(per_atom), columns)
    return columns


def _refuse_clashing_fields(keys, columns):
    # ASE packs the columns into a record array with a field per column ('forces0',
    # 'forces1', ... for a wide one): a name taken twice makes it fail
    fields = []
    for key, (_, _, width, _) in zip(keys, columns):
        fields.extend([key] if width == 1 else [f"{key}{c}" for c in range(width)])
    if len(set(fields)) != len(fields):
        raise _NotCovered("two columns map to the same record field name")


def _symbols(atoms, n_atoms):
    if n_atoms == 0:
        # ASE's empty symbol list becomes a float array: the species column is typed R
        return np.zeros(0)
    numbers_ = atoms.arrays["numbers"]
    symbols = _chemical_symbols()
    if numbers_.min() < 0 or numbers_.max() >= len(symbols):
        raise _NotCovered("atomic numbers out of range")
    return symbols[numbers_]


@lru_cache(maxsize=1)
def _chemical_symbols():
    from ase.data import chemical_symbols

    return np.array(chemical_symbols)


def _column(key, values, n_atoms):
    if not isinstance(values, np.ndarray):
        raise _NotCovered(f"per-atom {key!r} is a {type(values).__name__}, not an array")
    kind = values.dtype.kind
    if kind not in _KIND_LAYOUT or (kind == "f" and values.dtype.itemsize not in (4, 8)):
        raise _NotCovered(f"per-atom {key!r} has dtype {values.dtype}")
    if values.ndim not in (1, 2) or values.shape[0] != n_atoms or (values.ndim == 2 and values.shape[1] == 0):
        raise _NotCovered(f"per-atom {key!r} has shape {values.shape}")
    width = 1 if values.ndim == 1 else values.shape[1]
    return _COLUMN_NAMES.get(key, key), kind, width, values.reshape(n_atoms, width)


def _move_mask(atoms, n_atoms):
    """The move_mask column ASE writes for FixAtoms/FixCartesian (True: free), None when all is free."""
    from ase.constraints import FixAtoms, FixCartesian

    fixes = [c for c in atoms.constraints if isinstance(c, (FixAtoms, FixCartesian))]
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
    """Properties string and the format of one atom's line, for a column signature."""
    properties = ":".join(f"{name}:{_KIND_LAYOUT[kind][0]}:{width}" for name, kind, width in signature)
    line = " ".join(" ".join([_KIND_LAYOUT[kind][1]] * width) for _, kind, width in signature) + "\n"
    return "Properties=" + properties, line


def _atom_lines(columns, line_format, n_atoms):
    if n_atoms == 0:
        return ""
    total = sum(width for _, _, width, _ in columns)
    # an object array turns each value into the Python int/float/bool/str that % formats
    # exactly as it formats the numpy scalar ASE passes
    values = np.empty((n_atoms, total), dtype=object)
    start = 0
    for _, _, width, array in columns:
        values[:, start:start + width] = array
        start += width
    return (line_format * n_atoms) % tuple(values.ravel().tolist())
