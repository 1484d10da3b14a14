"""Content hashes that are the same in every process, run and Python hash seed.

Used as cache keys: an item's output is reused only if the operation (its code and what
that code reads), its arguments, the item's content and its random stream are what they
were.  ``pickle`` is not canonical (dict and set order, memo ids), so values are encoded
here with type tags, dict keys and set members sorted, arrays by dtype, shape and bytes.
What code counts by is :mod:`wfl_like.autoparallelize.resume.code_identity`'s.
"""

import copyreg
import errno
import functools
import hashlib
import inspect
import json
import math
import os
import struct
import types
import warnings
from pathlib import Path, PurePath

import numpy as np
from ase import Atoms

from wfl_like.autoparallelize.resume import code_identity
from wfl_like.autoparallelize.resume.code_identity import Unfingerprintable, feed_step
from wfl_like.configset import ConfigSet
from wfl_like.locations import LOC_KEY


def fingerprint(*values):
    """Hex digest of the canonical encoding of ``values``.

    Structures are hashed by everything they carry (their location aside), functions and
    classes by what :mod:`~wfl_like.autoparallelize.resume.code_identity` says they reach, ASE
    calculators given as values by class and parameters, other objects by what pickle
    would rebuild them from.

    Raises
    ------
    TypeError
        A value has no content to hash (a lock, an open file); the message says where.
    """
    try:
        return _digest(*values)
    except Unfingerprintable as error:
        where = f" at value{error.where()}" if error.path else ""
        raise TypeError(f"cannot fingerprint a {error.type_name}{where}: {error.reason}") from error


def fingerprint_call(op, args, kwargs, iterable_arg=0, initializer=(None, ())):
    """Hex digest of an operation and its fixed arguments: the part of a call's cache key
    that is the same for every item, computed once per call.

    Parameters
    ----------
    op : callable
    args : tuple
        The operation's arguments besides the items.
    kwargs : dict
    iterable_arg : int or str, default 0
        Where the items go, to name the other arguments in errors.
    initializer : (callable or None, sequence)
        The per-worker set-up: it counts as the op does, and the module-level values it
        assigns count as the op's state (by their module's source), not by the value they
        happen to hold when the call starts.

    Raises
    ------
    TypeError
        An argument, or something the operation's code reads, has no content to hash;
        the message names it and says what to do.
    """
    hasher = hashlib.blake2b(digest_size=20)
    walk = code_identity.Walk()
    init_func, init_args = initializer
    parts = list(_call_parts(op, args, kwargs, iterable_arg))
    if init_func is not None:
        walk.note_set_up(init_func)
        parts += [("the initializer", init_func), ("the initializer's arguments", tuple(init_args))]
    for role, value in parts:
        try:
            _feed(hasher, value, walk)
        except Unfingerprintable as error:
            raise TypeError(_unfingerprintable_message(op, role, error)) from error
    try:
        walk.drain()
    except Unfingerprintable as error:
        raise TypeError(_unfingerprintable_message(op, "what the operation and its arguments reach", error)) \
            from error
    return hasher.hexdigest()


def _call_parts(op, args, kwargs, iterable_arg):
    names = _positional_names(op, len(args), iterable_arg)
    yield "the operation", op
    yield "the number of arguments", [len(args), sorted(kwargs)]
    for position, value in enumerate(args):
        if names and position < len(names):
            yield f"argument {names[position]!r} (args[{position}], given by position)", value
        else:
            yield f"positional argument args[{position}]", value
    for name in sorted(kwargs):
        yield f"keyword argument {name!r}", kwargs[name]


def _positional_names(op, n_args, iterable_arg):
    try:
        parameters = list(inspect.signature(op).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(iterable_arg, int) and iterable_arg < len(positional):
        del positional[iterable_arg]
    elif isinstance(iterable_arg, str) and iterable_arg in positional:
        positional.remove(iterable_arg)
    return positional[:n_args]


def _unfingerprintable_message(op, role, error):
    op_name = f"{getattr(op, '__module__', None)}.{getattr(op, '__qualname__', repr(op))}"
    where = f", at {error.where().strip()}," if error.path else ""
    verb = "holds" if error.path else "is"
    what = (f"cannot compute the cache key of {op_name}: {role}{where} {verb} a {error.type_name}, which has no "
            f"content to hash ({error.reason}); its identity would not survive a rerun, so it cannot be used instead.")
    if error.holder is not None:
        remedy = (f" Define __getstate__ on {error.holder.__module__}.{error.holder.__qualname__} returning "
                  f"what defines the object (its settings, not its locks, files or caches)")
    else:
        remedy = " Pass what defines the object (its settings, a path) instead of the object itself"
    return what + remedy + ", or pass AutoparaInfo(cache=False) to run this call without a journal."


def frame_key(call_key, identity, rng, position, text_key):
    """The cache key of a frame of an input file, as cheaply as one hash of its parts.

    Parameters
    ----------
    call_key : str
        The call's part of every key.
    identity : tuple
        ``FrameItem.identity()``: ``("frame", digest of the frame's bytes)``.
    rng : numpy.random.Generator or None
        The item's own random stream.
    position : int or None
        The item's index, for an operation told its index.
    text_key : str
        A fingerprint of what decides the text its output is kept as (the outputs' settings).
    """
    if not (isinstance(identity, tuple) and len(identity) == 2 and identity[0] == "frame"
            and isinstance(identity[1], bytes)):
        raise TypeError(f"not the identity of a frame: {identity!r:.100}")
    digest = identity[1]
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(b"frame\0")
    for part in (call_key.encode(), digest,
                 b"" if rng is None else _digest(rng).encode(),
                 b"" if position is None else str(int(position)).encode(), text_key.encode()):
        _feed_bytes(hasher, part)
    return hasher.hexdigest()


def fingerprint_extra(value):
    """Hex digest of ``AutoparaInfo(cache_extra=...)``: what the outputs depend on that the
    journal cannot see by itself.

    Parameters
    ----------
    value : object
        Values count by content as usual; :class:`pathlib.Path` objects by the bytes of
        the file, or of every file under the directory (relative names and contents),
        they name; lists, tuples and dicts of such things too.

    Raises
    ------
    FileNotFoundError
        A path given does not exist (checked before any work).
    """
    return fingerprint(_with_file_contents(value))


class _FileContents:
    """What a path in ``cache_extra`` stands for: the hash of the bytes under it."""

    __slots__ = ("digest",)

    def __init__(self, digest):
        self.digest = digest

    def __reduce__(self):
        return (_FileContents, (self.digest,))


def _with_file_contents(value):
    if isinstance(value, PurePath):
        return _FileContents(_contents_digest(Path(value)))
    if isinstance(value, (list, tuple)):
        converted = [_with_file_contents(item) for item in value]
        return tuple(converted) if isinstance(value, tuple) else converted
    if isinstance(value, dict):
        return {key: _with_file_contents(item) for key, item in value.items()}
    if isinstance(value, str) and value and os.path.exists(value):
        # a file named as text counts by its name alone, which is rarely what was meant
        warnings.warn(f"cache_extra holds the string {value!r}, which names an existing path; it counts by its "
                      f"text, not by the file's bytes: pass pathlib.Path({value!r}) to fold in its content",
                      stacklevel=6)
    return value


def _contents_digest(path):
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
        return _digest([[name, _file_digest(p)] for name, p in files])
    raise FileNotFoundError(errno.ENOENT, "cache_extra names a path that does not exist (give the file or "
                                          "directory that the outputs depend on)", str(path.absolute()))


def _file_digest(path):
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the encoding ------------------------------------------------------------------------------

def _digest(*values):
    hasher = hashlib.blake2b(digest_size=20)
    walk = code_identity.Walk()
    for value in values:
        _feed(hasher, value, walk)
    walk.drain()
    return hasher.hexdigest()


def _feed(hasher, value, seen):
    """Write a type-tagged, canonical encoding of ``value`` into ``hasher``."""
    tag, feeder = _encoder_for(type(value))
    hasher.update(tag)
    feeder(hasher, value, seen)


def _feed_bytes(hasher, data):
    hasher.update(struct.pack("<q", len(data)))
    hasher.update(data)


def _feed_nothing(hasher, value, seen):
    pass


def _feed_scalar_type(hasher, value):
    # a numpy scalar computes in its own width (numpy.int8(100) * 3 wraps around): its
    # dtype counts as well as its value
    if isinstance(value, np.generic):
        hasher.update(value.dtype.str.encode())


def _feed_int(hasher, value, seen):
    _feed_scalar_type(hasher, value)
    hasher.update(str(int(value)).encode())


def _feed_float(hasher, value, seen):
    _feed_scalar_type(hasher, value)
    # repr round-trips exactly; nan and -0.0 keep their identity
    hasher.update(repr(float(value)).encode() if not math.isnan(value) else b"nan")


def _feed_complex(hasher, value, seen):
    _feed_scalar_type(hasher, value)
    hasher.update(repr(complex(value)).encode())


def _feed_str(hasher, value, seen=None):
    _feed_bytes(hasher, value.encode("utf-8", "surrogatepass"))


def _feed_raw(hasher, value, seen):
    _feed_bytes(hasher, bytes(value))


def _feed_sequence(hasher, value, seen):
    hasher.update(struct.pack("<q", len(value)))
    for position, item in enumerate(value):
        feed_step(_feed, hasher, item, seen, f"[{position}]")


def _feed_mapping(hasher, mapping, seen, attributes=False):
    """A mapping, keys sorted by their own fingerprint; ``attributes``: it is an object's
    state, so an error names ``.key`` rather than ``[key]``."""
    keys = sorted(mapping, key=lambda key: _digest(key))
    hasher.update(struct.pack("<q", len(keys)))
    for key in keys:
        _feed(hasher, key, seen)
        step = f".{key}" if attributes and isinstance(key, str) else f"[{key!r}]"
        feed_step(_feed, hasher, mapping[key], seen, step)


def _feed_set(hasher, value, seen):
    _feed(hasher, sorted(_digest(member) for member in value), seen)


def _feed_array(hasher, array, seen):
    if array.dtype == object:
        _feed(hasher, array.tolist(), seen)
        return
    array = np.ascontiguousarray(array)
    _feed_bytes(hasher, array.dtype.str.encode())
    hasher.update(struct.pack(f"<{1 + array.ndim}q", array.ndim, *array.shape))
    _feed_bytes(hasher, array.tobytes())


def _feed_atoms(hasher, atoms, seen):
    """Everything a structure carries but its location: its class, numbers, positions, cell,
    cell displacement, pbc, info, arrays, constraints and attached calculator (results
    read from a file, such as reference energies and forces, included)."""
    _feed_str(hasher, f"{type(atoms).__module__}.{type(atoms).__qualname__}")
    _feed_array(hasher, atoms.numbers, seen)
    _feed_array(hasher, atoms.positions, seen)
    _feed_array(hasher, np.asarray(atoms.cell), seen)
    _feed_array(hasher, np.asarray(atoms.get_celldisp()), seen)
    _feed_array(hasher, atoms.pbc, seen)
    info = {k: v for k, v in atoms.info.items() if k != LOC_KEY}
    feed_step(_feed_mapping, hasher, info, seen, ".info")
    arrays = {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}
    feed_step(_feed_mapping, hasher, arrays, seen, ".arrays")
    constraints = [c.todict() if hasattr(c, "todict") else c for c in atoms.constraints]
    feed_step(_feed, hasher, constraints, seen, ".constraints")
    feed_step(_feed_attached_calculator, hasher, atoms.calc, seen, ".calc")


def _feed_attached_calculator(hasher, calc, seen):
    """A structure's calculator: by class, parameters and results (a SinglePointCalculator
    from a file is its results)."""
    if not _is_calculator(calc):
        _feed(hasher, calc, seen)
        return
    hasher.update(b"K")
    _feed(hasher, type(calc), seen)
    _feed(hasher, dict(calc.parameters), seen)
    _feed(hasher, dict(getattr(calc, "results", None) or {}), seen)


def _is_calculator(value):
    return isinstance(getattr(value, "parameters", None), dict) and hasattr(value, "get_property")


def _feed_calculator(hasher, calc, seen):
    """A calculator given as a value: its parameters; for one not of ASE's own, also its
    state, since ML potentials keep their model outside ``parameters``."""
    _feed(hasher, dict(calc.parameters), seen)
    if type(calc).__module__.partition(".")[0] == "ase":
        return      # ASE's calculators are what their parameters say
    state = {name: value for name, value in getattr(calc, "__dict__", {}).items() if name not in _CALCULATION_SLOTS}
    part = hashlib.blake2b(digest_size=20)
    try:
        _feed(part, state, seen)
    except Unfingerprintable as error:
        warnings.warn(f"calculator {type(calc).__qualname__} given as an instance holds a {error.type_name} that "
                      f"cannot be hashed, so a change of its model is not seen by the journal; give it as a spec "
                      f"(constructor, args, kwargs) and name its model file in cache_extra", stacklevel=2)
        return
    hasher.update(part.digest())


def _feed_function(hasher, func, seen):
    code_identity.feed_function(_feed, hasher, func, seen)


def _feed_class(hasher, cls, seen):
    code_identity.feed_class(_feed, hasher, cls, seen)


def _feed_module(hasher, module, seen):
    code_identity.feed_module(hasher, module)


def _feed_generator(hasher, rng, seen):
    bit_generator = rng.bit_generator
    hasher.update(_class_digest(type(bit_generator)))
    state = bit_generator.state
    try:
        # the usual states (PCG64, Philox, SFC64) are made of text and whole numbers: this
        # is exact, and one item's stream is hashed in microseconds
        text = json.dumps(state, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        _feed(hasher, state, seen)      # an array in it (MT19937's key)
        return
    hasher.update(b"j")
    _feed_bytes(hasher, text.encode())


@functools.lru_cache(maxsize=64)
def _class_digest(cls):
    """A bit generator's class, hashed once per process (its code does not change while it runs)."""
    hasher = hashlib.blake2b(digest_size=20)
    walk = code_identity.Walk()
    _feed_class(hasher, cls, walk)
    walk.drain()
    return hasher.digest()


def _feed_path(hasher, path, seen):
    # by its text: a path's instance state holds caches (its str, its hash, which
    # depends on the hash seed) that come and go with use
    _feed_bytes(hasher, f"{type(path).__name__}:{path}".encode("utf-8", "surrogateescape"))


def _feed_partial(hasher, partial, seen):
    # the function it wraps by its code, as a plain function (its pickle names it only)
    _feed(hasher, [partial.func, partial.args, partial.keywords], seen)


def _feed_group(hasher, group, seen):
    # a group from ConfigSet.groups(): its structures and where they sit in it
    _feed(hasher, [[list(loc), atoms] for loc, atoms in group.located()], seen)


def _feed_object(hasher, obj, seen):
    """Any other object: its class, and its parameters (an ASE calculator given as a value
    is what its class and parameters say, not its cached results), or else what pickle
    would rebuild it from (its constructor, arguments and state)."""
    _feed_class(hasher, type(obj), seen)
    if not seen.visit(obj):
        return
    try:
        _feed_object_content(hasher, obj, seen)
    except Unfingerprintable as error:
        if error.holder is None and error.path:     # found inside it, not the object itself
            error.holder = type(obj)
        raise


# What an ASE calculator holds about its last calculation, not about what it computes.
_CALCULATION_SLOTS = frozenset({"results", "atoms", "parameters"})


def _feed_object_content(hasher, obj, seen):
    if _is_calculator(obj):
        _feed_calculator(hasher, obj, seen)
        return
    wrapped = getattr(obj, "__dict__", {}).get("__wrapped__") if hasattr(obj, "__dict__") else None
    if wrapped is not None:
        # a callable wrapping a function (functools.lru_cache, wraps): the function counts
        feed_step(_feed, hasher, wrapped, seen, ".__wrapped__")
    try:
        # as pickle does: a reducer registered for the type (copyreg) first
        reducer = copyreg.dispatch_table.get(type(obj))
        reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
    except Exception as error:
        raise Unfingerprintable(obj, f"{type(error).__name__}: {error}") from error
    if isinstance(reduced, str):
        _feed_str(hasher, reduced)       # pickled by reference: its name is its identity
        return
    constructor, arguments, state, list_items, dict_items = (tuple(reduced) + (None,) * 5)[:5]
    _feed(hasher, constructor, seen)
    feed_step(_feed, hasher, arguments, seen, "")
    _feed_state(hasher, state, seen)
    _feed(hasher, None if list_items is None else list(list_items), seen)
    _feed(hasher, None if dict_items is None else dict(dict_items), seen)


def _feed_state(hasher, state, seen):
    if isinstance(state, dict):
        _feed_mapping(hasher, state, seen, attributes=True)
    elif isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
        # (instance dict, __slots__ values)
        for part in state:
            _feed_state(hasher, part, seen)
    else:
        _feed(hasher, state, seen)


# One table, in the order the types are tried (bool before int, ...): the tag written,
# then the feeder that writes the value.
_ENCODERS = (
    (type(None), b"N", _feed_nothing),
    ((bool, np.bool_), b"b", _feed_int),
    ((int, np.integer), b"i", _feed_int),
    ((float, np.floating), b"f", _feed_float),
    ((complex, np.complexfloating), b"c", _feed_complex),
    (str, b"s", _feed_str),
    ((bytes, bytearray, memoryview), b"y", _feed_raw),
    (list, b"l", _feed_sequence),
    (tuple, b"t", _feed_sequence),
    ((dict, types.MappingProxyType), b"d", _feed_mapping),
    ((set, frozenset), b"S", _feed_set),
    (np.ndarray, b"a", _feed_array),
    (Atoms, b"A", _feed_atoms),
    ((types.FunctionType, types.MethodType, types.BuiltinFunctionType), b"F", _feed_function),
    (type, b"C", _feed_class),
    (types.ModuleType, b"M", _feed_module),
    (np.random.Generator, b"R", _feed_generator),
    (ConfigSet, b"G", _feed_group),
    (PurePath, b"P", _feed_path),
    (functools.partial, b"p", _feed_partial),
)


@functools.lru_cache(maxsize=1024)
def _encoder_for(cls):
    for kinds, tag, feeder in _ENCODERS:
        if issubclass(cls, kinds):
            return tag, feeder
    return b"o", _feed_object


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

