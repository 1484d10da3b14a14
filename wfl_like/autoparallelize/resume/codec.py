"""The journal's storage format for outputs: tagged JSON that can execute nothing.

A journal may come from anyone (a shared directory, a dataset copied from a colleague),
so what it holds is data, never code: no pickle.  Every value is written exactly
(floats by ``repr``, arrays by dtype, shape and raw bytes), so an output reused from the
journal is the very output that was computed, and writes the same bytes.

Plain JSON stands for itself (``None``, ``bool``, ``int``, ``float``, ``str``, lists);
everything else is an object ``{"~": tag, ...}``:

==========  ========================================================================
tag         fields
==========  ========================================================================
tuple       ``items``: list
dict        ``items``: list of ``[key, value]`` pairs, in order (keys of any encodable type)
complex     ``re``, ``im``: floats
bytes       ``b64``: base64 text
ndarray     ``dtype`` (``numpy.dtype.str``), ``shape`` (list of ints), ``b64`` (C-order bytes)
scalar      a numpy scalar: ``dtype``, ``b64``
atoms       ``numbers``, ``positions``, ``cell``, ``pbc``, ``celldisp`` (ndarrays), ``info``
            (dict), ``arrays`` (dict of name to ndarray), ``constraints`` (list of
            ``[class name, kwargs]``, classes of :mod:`ase.constraints` only), ``calc``
            (dict of results, rebuilt as a SinglePointCalculator, or None)
==========  ========================================================================

Decoding treats the text as untrusted: every field is checked for type and shape, and
anything else raises :class:`ValueError`.
"""

import base64
import binascii
import json
import math

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

TAG = "~"
_ATOMS_FIELDS = ("numbers", "positions", "cell", "pbc", "celldisp", "info", "arrays", "constraints", "calc")
# arrays an Atoms is built from, not set one by one
_BUILT_ARRAYS = ("numbers", "positions")


class UnencodableError(TypeError):
    """A value the journal's format cannot hold exactly."""


def encode(value):
    """The journal text of ``value``.

    Raises
    ------
    UnencodableError
        ``value`` holds something the format cannot store exactly (an object of another
        class, an object array, a subclass of a built-in type).
    """
    try:
        return json.dumps(_encode(value), separators=(",", ":"), allow_nan=True)
    except RecursionError:
        raise UnencodableError("the value is nested too deeply") from None
    except UnencodableError:
        raise
    except Exception as exc:
        # an int too long for its text form, an object that looks like a calculator or a
        # constraint and is not one: not storable, never a reason to lose the run
        raise UnencodableError(f"{type(exc).__name__}: {exc}") from None


def decode(text):
    """The value encoded in ``text`` by :func:`encode`.

    Raises
    ------
    ValueError
        ``text`` is not what :func:`encode` writes.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
    if not isinstance(text, str):
        raise ValueError(f"a stored output must be text, not {type(text).__name__}")
    try:
        node = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        return _decode(node)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# --- encoding --------------------------------------------------------------------------------

def _encode(value):
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if isinstance(value, np.generic):
        return {TAG: "scalar", **_array_fields(np.asarray(value), with_shape=False)}
    if kind is list:
        return [_encode(item) for item in value]
    if kind is tuple:
        return {TAG: "tuple", "items": [_encode(item) for item in value]}
    if kind is dict:
        return {TAG: "dict", "items": [[_encode(key), _encode(item)] for key, item in value.items()]}
    if kind is complex:
        return {TAG: "complex", "re": value.real, "im": value.imag}
    if kind is bytes:
        return {TAG: "bytes", "b64": _b64(value)}
    if kind is np.ndarray:
        return {TAG: "ndarray", **_array_fields(value)}
    if kind is Atoms:
        return _encode_atoms(value)
    raise UnencodableError(f"a {kind.__module__}.{kind.__qualname__} cannot be stored exactly")


def _array_fields(array, with_shape=True):
    dtype = array.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise UnencodableError(f"an array of dtype {dtype} cannot be stored exactly")
    fields = {"dtype": dtype.str, "b64": _b64(np.ascontiguousarray(array).tobytes())}
    if with_shape:
        fields["shape"] = list(array.shape)
    return fields


def _encode_atoms(atoms):
    arrays = {name: array for name, array in atoms.arrays.items() if name not in _BUILT_ARRAYS}
    constraints = [_constraint_fields(constraint) for constraint in atoms.constraints]
    calc = None if atoms.calc is None else dict(atoms.calc.results)
    return {TAG: "atoms",
            "numbers": _encode(atoms.arrays["numbers"]), "positions": _encode(atoms.arrays["positions"]),
            "cell": _encode(np.asarray(atoms.cell)), "pbc": _encode(np.asarray(atoms.pbc)),
            "celldisp": _encode(np.asarray(atoms.get_celldisp())), "info": _encode(dict(atoms.info)),
            "arrays": _encode(arrays), "constraints": constraints, "calc": _encode(calc)}


def _constraint_fields(constraint):
    described = constraint.todict()
    name = described.get("name")
    if _constraint_class(name) is not type(constraint):
        raise UnencodableError(f"constraint {type(constraint).__name__} is not one of ase.constraints")
    return [name, _encode(dict(described.get("kwargs", {})))]


def _b64(data):
    return base64.b64encode(data).decode("ascii")


# --- decoding --------------------------------------------------------------------------------

def _decode(node):
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is list:
        return [_decode(item) for item in node]
    if type(node) is not dict:
        raise ValueError(f"unexpected JSON value of type {type(node).__name__}")
    tag = node.get(TAG)
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise ValueError(f"unknown tag {tag!r}")
    fields = _DECODER_FIELDS[tag]
    if set(node) != {TAG, *fields}:
        raise ValueError(f"a {tag!r} value has fields {sorted(set(node) - {TAG})}, expected {list(fields)}")
    return decoder(node)


def _decode_tuple(node):
    return tuple(_decode(item) for item in _list(node["items"], "tuple items"))


def _decode_dict(node):
    result = {}
    for pair in _list(node["items"], "dict items"):
        if type(pair) is not list or len(pair) != 2:
            raise ValueError("a dict item is not a [key, value] pair")
        key = _decode(pair[0])
        try:
            result[key] = _decode(pair[1])
        except TypeError:
            raise ValueError(f"a dict key of type {type(key).__name__} is not hashable") from None
    return result


def _decode_complex(node):
    return complex(_float(node["re"], "complex real part"), _float(node["im"], "complex imaginary part"))


def _decode_bytes(node):
    return _unb64(node["b64"])


# bool, integers, floats, complex, bytes and text: no void, datetime or object arrays
_PLAIN_KINDS = "biufcSU"


def _valid_text(array):
    """``array``, checked to hold only code points text can have, when it is of text dtype."""
    if array.dtype.kind == "U" and array.size:
        points = np.ascontiguousarray(array).view(np.dtype(array.dtype.byteorder.replace("|", "=") + "u4"))
        if points.max() > 0x10FFFF or ((points >= 0xD800) & (points <= 0xDFFF)).any():
            raise ValueError("a text array holds values that are no characters")
    return array


def _decode_ndarray(node):
    shape = _list(node["shape"], "array shape")
    if not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 32:
        raise ValueError(f"array shape {shape!r} is not a list of at most 32 non-negative ints")
    dtype = _dtype(node["dtype"])
    data = _unb64(node["b64"])
    if math.prod(shape) * dtype.itemsize != len(data):
        raise ValueError(f"array of shape {shape} and dtype {dtype.str} does not match its {len(data)} bytes")
    return _valid_text(np.frombuffer(data, dtype=dtype).reshape(shape).copy())


def _decode_scalar(node):
    dtype = _dtype(node["dtype"])
    data = _unb64(node["b64"])
    if len(data) != dtype.itemsize:
        raise ValueError(f"a scalar of dtype {dtype.str} does not match its {len(data)} bytes")
    return _valid_text(np.frombuffer(data, dtype=dtype))[0]


def _decode_atoms(node):
    numbers = _typed_array(node["numbers"], "numbers", "iu", (None,))
    if numbers.size and (numbers.min() < 0 or numbers.max() >= len(chemical_symbols)):
        # a negative number would silently index chemical symbols from their end
        raise ValueError(f"atomic numbers must lie in 0..{len(chemical_symbols) - 1}")
    n_atoms = len(numbers)
    atoms = Atoms(numbers=numbers,
                  positions=_typed_array(node["positions"], "positions", "f", (n_atoms, 3)),
                  cell=_typed_array(node["cell"], "cell", "f", (3, 3)),
                  pbc=_typed_array(node["pbc"], "pbc", "b", (3,)),
                  celldisp=_celldisp(node["celldisp"]))
    atoms.info = _typed(node["info"], dict, "info")
    for name, array in _typed(node["arrays"], dict, "arrays").items():
        if type(name) is not str or name in _BUILT_ARRAYS or type(array) is not np.ndarray \
                or array.ndim == 0 or len(array) != n_atoms:
            raise ValueError(f"per-atom array {name!r} is not an array of {n_atoms} rows")
        atoms.arrays[name] = array
    atoms.set_constraint([_decode_constraint(item) for item in _list(node["constraints"], "constraints")])
    results = _decode(node["calc"])
    if results is not None:
        # last: the calculator keeps a copy of the structure its results belong to
        from ase.calculators.singlepoint import SinglePointCalculator

        if type(results) is not dict or not all(type(key) is str for key in results):
            raise ValueError("calculator results are not a dict with str keys")
        atoms.calc = SinglePointCalculator(atoms)
        atoms.calc.results = results
    return atoms


def _decode_constraint(item):
    if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
        raise ValueError("a constraint is not a [class name, kwargs] pair")
    cls = _constraint_class(item[0])
    if cls is None:
        raise ValueError(f"constraint {item[0]!r} is not a class of ase.constraints")
    kwargs = _typed(item[1], dict, "constraint kwargs")
    if not all(type(key) is str for key in kwargs):
        raise ValueError("constraint kwargs have non-str names")
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise ValueError(f"constraint {item[0]} cannot be rebuilt: {exc}") from None


def _constraint_class(name):
    """The class ``name`` of :mod:`ase.constraints`, or None: nothing else is ever built."""
    import ase.constraints

    if type(name) is not str or name not in getattr(ase.constraints, "__all__", ()):
        return None
    cls = getattr(ase.constraints, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, ase.constraints.FixConstraint) else None


def _celldisp(node):
    # ASE keeps it as given: (3, 1) by default, (3,) when passed as a list
    array = _decode(node)
    if type(array) is np.ndarray and array.shape in ((3,), (3, 1)):
        return _typed_array(node, "celldisp", "f", array.shape)
    raise ValueError("atoms celldisp is not an array of 3 floats")


def _typed_array(node, what, kinds, shape):
    array = _decode(node)
    if type(array) is not np.ndarray or array.dtype.kind not in kinds or array.ndim != len(shape) \
            or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise ValueError(f"atoms {what} is not an array of shape {shape} and kind {kinds!r}")
    return array


def _typed(node, kind, what):
    value = _decode(node)
    if type(value) is not kind:
        raise ValueError(f"{what} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _list(value, what):
    if type(value) is not list:
        raise ValueError(f"{what} is not a list")
    return value


def _float(value, what):
    if type(value) not in (float, int):
        raise ValueError(f"{what} is not a number")
    return float(value)


def _dtype(text):
    if type(text) is not str or len(text) > 16:
        raise ValueError(f"dtype {text!r} is not a short dtype string")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise ValueError(f"dtype {text!r} is not a numpy dtype") from None
    if dtype.str != text or dtype.kind not in _PLAIN_KINDS or dtype.fields is not None \
            or dtype.subdtype is not None or dtype.itemsize == 0:
        raise ValueError(f"dtype {text!r} is not a plain numeric, bool or string dtype")
    return dtype


def _unb64(text):
    if type(text) is not str:
        raise ValueError("base64 data is not text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed base64 data") from None


_DECODERS = {"tuple": _decode_tuple, "dict": _decode_dict, "complex": _decode_complex, "bytes": _decode_bytes,
             "ndarray": _decode_ndarray, "scalar": _decode_scalar, "atoms": _decode_atoms}
_DECODER_FIELDS = {"tuple": ("items",), "dict": ("items",), "complex": ("re", "im"), "bytes": ("b64",),
                   "ndarray": ("dtype", "shape", "b64"), "scalar": ("dtype", "b64"),
                   "atoms": _ATOMS_FIELDS}
