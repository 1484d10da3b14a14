"""Content hashes that are the same in every process, run and Python hash seed.

Used as cache keys: an item's output is reused only if the operation (its code), its
arguments, the item's content and its random stream are what they were.  ``pickle`` is
not canonical (dict and set order, memo ids), so values are encoded here with type tags,
dict keys and set members sorted, arrays by dtype, shape and bytes.
"""

import functools
import hashlib
import importlib
import math
import pickle
import struct
import sys
import types
from pathlib import PurePath

import numpy as np
from ase import Atoms

from wfl_like.configset import ConfigSet
from wfl_like.locations import LOC_KEY


def fingerprint(*values):
    """Hex digest of the canonical encoding of ``values``.

    Structures are hashed by content (numbers, positions, cell, pbc, info, arrays,
    constraints) without their location, functions by name and code, classes by name
    and package version, ASE calculators by class and parameters.
    """
    hasher = hashlib.blake2b(digest_size=20)
    for value in values:
        _feed(hasher, value, set())
    return hasher.hexdigest()


def _feed(hasher, value, seen):
    """Write a type-tagged, canonical encoding of ``value`` into ``hasher``."""
    tag = _tag_of(value)
    hasher.update(tag)
    if tag == b"N":
        return
    if tag in (b"b", b"i"):
        hasher.update(str(int(value)).encode())
    elif tag == b"f":
        # repr round-trips exactly; nan and -0.0 keep their identity
        hasher.update(repr(float(value)).encode() if not math.isnan(value) else b"nan")
    elif tag == b"c":
        hasher.update(repr(complex(value)).encode())
    elif tag == b"s":
        _feed_bytes(hasher, value.encode("utf-8", "surrogatepass"))
    elif tag == b"y":
        _feed_bytes(hasher, bytes(value))
    elif tag in (b"l", b"t"):
        hasher.update(struct.pack("<q", len(value)))
        for item in value:
            _feed(hasher, item, seen)
    elif tag == b"d":
        _feed_mapping(hasher, value, seen)
    elif tag == b"S":
        members = sorted(fingerprint(member) for member in value)
        _feed(hasher, members, seen)
    elif tag == b"a":
        _feed_array(hasher, value)
    elif tag == b"A":
        _feed_atoms(hasher, value, seen)
    elif tag == b"F":
        _feed_function(hasher, value, seen)
    elif tag == b"C":
        _feed_class(hasher, value)
    elif tag == b"M":
        _feed_bytes(hasher, value.__name__.encode())
    elif tag == b"R":
        _feed_generator(hasher, value, seen)
    elif tag == b"P":
        # by its text: a path's instance state holds caches (its str, its hash, which
        # depends on the hash seed) that come and go with use
        _feed_bytes(hasher, f"{type(value).__name__}:{value}".encode("utf-8", "surrogateescape"))
    elif tag == b"p":
        # the function it wraps by its code, as a plain function (its pickle names it only)
        _feed(hasher, [value.func, value.args, value.keywords], seen)
    elif tag == b"G":
        # a group from ConfigSet.groups(): its structures and where they sit in it
        _feed(hasher, [[list(loc), atoms] for loc, atoms in value._located()], seen)
    else:
        _feed_object(hasher, value, seen)


def _tag_of(value):
    if value is None:
        return b"N"
    if isinstance(value, (bool, np.bool_)):
        return b"b"
    if isinstance(value, (int, np.integer)):
        return b"i"
    if isinstance(value, (float, np.floating)):
        return b"f"
    if isinstance(value, (complex, np.complexfloating)):
        return b"c"
    if isinstance(value, str):
        return b"s"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"y"
    if isinstance(value, list):
        return b"l"
    if isinstance(value, tuple):
        return b"t"
    if isinstance(value, dict):
        return b"d"
    if isinstance(value, (set, frozenset)):
        return b"S"
    if isinstance(value, np.ndarray):
        return b"a"
    if isinstance(value, Atoms):
        return b"A"
    if isinstance(value, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return b"F"
    if isinstance(value, type):
        return b"C"
    if isinstance(value, types.ModuleType):
        return b"M"
    if isinstance(value, np.random.Generator):
        return b"R"
    if isinstance(value, ConfigSet):
        return b"G"
    if isinstance(value, PurePath):
        return b"P"
    if isinstance(value, functools.partial):
        return b"p"
    return b"o"


def _feed_bytes(hasher, data):
    hasher.update(struct.pack("<q", len(data)))
    hasher.update(data)


def _feed_mapping(hasher, mapping, seen):
    keys = sorted(mapping, key=lambda key: fingerprint(key))
    hasher.update(struct.pack("<q", len(keys)))
    for key in keys:
        _feed(hasher, key, seen)
        _feed(hasher, mapping[key], seen)


def _feed_array(hasher, array):
    if array.dtype == object:
        _feed(hasher, array.tolist(), set())
        return
    array = np.ascontiguousarray(array)
    _feed_bytes(hasher, array.dtype.str.encode())
    hasher.update(struct.pack(f"<{1 + array.ndim}q", array.ndim, *array.shape))
    _feed_bytes(hasher, array.tobytes())


def _feed_atoms(hasher, atoms, seen):
    _feed_array(hasher, atoms.numbers)
    _feed_array(hasher, atoms.positions)
    _feed_array(hasher, np.asarray(atoms.cell))
    _feed_array(hasher, atoms.pbc)
    _feed_mapping(hasher, {k: v for k, v in atoms.info.items() if k != LOC_KEY}, seen)
    _feed_mapping(hasher, {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}, seen)
    _feed(hasher, [repr(constraint.todict()) for constraint in atoms.constraints], seen)


def _feed_function(hasher, func, seen):
    """A function by name and code: its own, its defaults and closure, and the code of the
    functions of its module that it calls by name (so editing a helper invalidates too)."""
    if isinstance(func, types.MethodType):
        _feed(hasher, func.__func__, seen)
        _feed(hasher, func.__self__, seen)
        return
    _feed_bytes(hasher, f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', repr(func))}".encode())
    code = getattr(func, "__code__", None)
    if code is None or id(func) in seen:
        return          # builtins: the name is the identity; a function already fed: no loop
    seen.add(id(func))
    _feed_code(hasher, code)
    _feed(hasher, func.__defaults__, seen)
    _feed(hasher, func.__kwdefaults__, seen)
    _feed(hasher, [cell.cell_contents for cell in func.__closure__ or ()], seen)
    module_globals = func.__globals__
    for name in sorted(_global_names(code)):
        helper = module_globals.get(name)
        if isinstance(helper, types.FunctionType) and helper.__module__ == func.__module__:
            _feed(hasher, helper, seen)


def _feed_code(hasher, code):
    _feed_bytes(hasher, code.co_code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(hasher, const)
        else:
            _feed(hasher, const, set())
    _feed(hasher, list(code.co_names), set())


def _global_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _feed_class(hasher, cls):
    """A class by name and by the version of the package it comes from; a class of a
    module with no version (a user's script or package) also by the code of its methods."""
    module = getattr(cls, "__module__", "") or ""
    _feed_bytes(hasher, f"{module}.{cls.__qualname__}".encode())
    version = _package_version(module)
    _feed_bytes(hasher, str(version).encode())
    if version is None and module not in ("builtins",) and module.split(".")[0] not in sys.stdlib_module_names:
        for name, member in sorted(vars(cls).items()):
            if isinstance(member, (types.FunctionType, staticmethod, classmethod)):
                function = getattr(member, "__func__", member)
                _feed_bytes(hasher, name.encode())
                _feed_code(hasher, function.__code__)


def _package_version(module_name):
    top = module_name.split(".")[0]
    package = sys.modules.get(top)
    if package is None:
        try:
            package = importlib.import_module(top)
        except Exception:
            return None
    return getattr(package, "__version__", None)


def _feed_generator(hasher, rng, seen):
    _feed_class(hasher, type(rng.bit_generator))
    _feed(hasher, rng.bit_generator.state, seen)


def _feed_object(hasher, obj, seen):
    """Any other object: its class, and its parameters (ASE calculators) or its state."""
    _feed_class(hasher, type(obj))
    if id(obj) in seen:
        return
    seen.add(id(obj))
    parameters = getattr(obj, "parameters", None)
    if isinstance(parameters, dict) and hasattr(obj, "get_property"):
        # an ASE calculator is what its class and parameters say, not its cached results
        _feed(hasher, dict(parameters), seen)
        return
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else getattr(obj, "__dict__", None)
    if state is not None:
        _feed(hasher, state, seen)
    else:
        # no inspectable state: fall back on its pickle (stable for most such objects)
        _feed_bytes(hasher, pickle.dumps(obj, protocol=4))


def describe(value, limit=200):
    """A short readable form of an argument, for logs and ``wfl-like status``."""
    if isinstance(value, (types.FunctionType, type)):
        text = f"{value.__module__}.{value.__qualname__}"
    elif isinstance(value, (tuple, list)):
        inner = ", ".join(describe(item, limit) for item in value)
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{key!r}: {describe(item, limit)}" for key, item in value.items()) + "}"
    elif hasattr(value, "get_property") and isinstance(getattr(value, "parameters", None), dict):
        text = f"{type(value).__name__}({dict(value.parameters)})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."

