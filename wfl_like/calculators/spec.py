"""Calculator specs: building them once per process, and the settings a structure gives itself.

A *spec* is a picklable recipe ``(constructor, args, kwargs)`` (or ``(constructor, args)``):
``constructor`` is any callable that returns an ASE calculator, a calculator class or a
factory function such as ``mace_mp``.  Workers build a spec once and keep the result, so
that an expensive potential is loaded once per process, not once per chunk.

A structure may carry settings of its own in ``atoms.info``, as in wfl:

- ``"WFL_CALCULATOR_INITIALIZER"``: a constructor that replaces the spec's (a callable, or
  its ``"module:name"`` text, which survives being written to a file);
- ``"WFL_CALCULATOR_ARGS"``: a list that replaces the spec's positional arguments;
- ``"WFL_CALCULATOR_KWARGS"``: a dict that *updates* the spec's keyword arguments.
"""

import collections
import importlib
import pickle

from wfl_like.autoparallelize.workers.opcall import call_generation

INITIALIZER_KEY = "WFL_CALCULATOR_INITIALIZER"
ARGS_KEY = "WFL_CALCULATOR_ARGS"
KWARGS_KEY = "WFL_CALCULATOR_KWARGS"
STRUCTURE_KEYS = (INITIALIZER_KEY, ARGS_KEY, KWARGS_KEY)

# Built calculators kept per process.  The specs the operations are called with stay
# warm in one pool; those of structures with settings of their own go to another, so
# that a chunk of many distinct settings cannot push the call's own calculator out.
MAX_CALL_SPECS = 2
MAX_STRUCTURE_SPECS = 4


def is_spec(calculator):
    """Whether ``calculator`` is a recipe (a tuple or list) rather than an instance."""
    return isinstance(calculator, (tuple, list))


def check_calculator_argument(calculator):
    """Refuse, before any work, what can be neither a calculator nor a recipe for one.

    Raises
    ------
    TypeError
        Not an instance with ``get_property``, nor ``(callable, args[, kwargs])`` with a
        list of args and a dict of kwargs.
    """
    if not is_spec(calculator):
        if not hasattr(calculator, "get_property"):
            raise TypeError(f"calculator must be an ASE calculator or a (constructor, args, kwargs) tuple, "
                            f"not {type(calculator).__name__}")
        return
    if len(calculator) not in (2, 3) or not callable(calculator[0]):
        raise TypeError(f"a calculator spec must be (constructor, args) or (constructor, args, kwargs) with a "
                        f"callable constructor, not {calculator!r}")
    args = calculator[1]
    if args is not None and (isinstance(args, (str, bytes, dict)) or not hasattr(args, "__iter__")):
        raise TypeError(f"the args of calculator spec {calculator!r} must be a list or tuple, "
                        f"not {type(args).__name__}")
    kwargs = calculator[2] if len(calculator) == 3 else None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"the kwargs of calculator spec {calculator!r} must be a dict, not {type(kwargs).__name__}")


def normalized(spec):
    """``(constructor, tuple args, dict kwargs)`` of a checked spec (None parts made empty)."""
    constructor, args = spec[0], spec[1] or ()
    kwargs = spec[2] if len(spec) == 3 and spec[2] else {}
    return constructor, tuple(args), dict(kwargs)


def constructor_name(constructor):
    """The name a constructor is known by in messages (and in wfl's ``_auto_`` prefixes)."""
    return getattr(constructor, "__name__", None) or type(constructor).__name__


def build(spec):
    """A new calculator from a spec.

    Raises
    ------
    TypeError
        The constructor returned something that is not an ASE calculator.
    """
    constructor, args, kwargs = normalized(spec)
    built = constructor(*args, **kwargs)
    if not hasattr(built, "get_property"):
        raise TypeError(f"the calculator constructor {getattr(constructor, '__qualname__', constructor)!r} "
                        f"returned a {type(built).__name__}, not an ASE calculator")
    return built


class _BuiltCalculators:
    """Calculators built from specs in this process for the call it serves now, least
    recently used first out.  A new call starts with none: its specs may name model files
    that changed since the last one."""

    def __init__(self, size):
        self.size = size
        self._entries = collections.OrderedDict()
        self._generation = None

    def _current(self):
        generation = call_generation()
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
        return self._entries

    def get(self, spec):
        self._current()
        key = _key(spec)
        if key is None:
            # arguments that cannot be pickled cannot be told apart: build anew
            return build(spec)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        built = build(spec)
        self._entries[key] = built
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return built

    def find(self, spec):
        """The calculator built for ``spec``, or None."""
        key = _key(spec)
        return self._current().get(key) if key is not None else None

    def clear(self):
        self._entries.clear()


_call_specs = _BuiltCalculators(MAX_CALL_SPECS)
_structure_specs = _BuiltCalculators(MAX_STRUCTURE_SPECS)


def _key(spec):
    constructor, args, kwargs = normalized(spec)
    try:
        arguments = pickle.dumps((args, sorted(kwargs.items())))
    except Exception:
        return None
    try:
        # the constructor itself (kept alive by the key): a class that reached a spawned worker
        # by value, defined in the driver's script, cannot be pickled by reference there
        hash(constructor)
        return constructor, arguments
    except TypeError:
        try:
            return pickle.dumps(constructor), arguments
        except Exception:
            return None


def construct_calculator(calculator):
    """An ASE calculator from an instance or a ``(constructor, args, kwargs)`` spec.

    A spec is built once per process and reused by later chunks: an expensive
    potential is loaded once per worker.

    Parameters
    ----------
    calculator : ase.calculators.calculator.Calculator or tuple
        An instance (returned as it is), or ``(constructor, args)`` /
        ``(constructor, args, kwargs)`` where ``constructor`` is any callable that
        returns a calculator.

    Raises
    ------
    TypeError
        ``calculator`` is neither, or the spec builds something that is not a calculator.
    """
    check_calculator_argument(calculator)
    if not is_spec(calculator):
        return calculator
    return _call_specs.get(calculator)


def structure_spec(atoms, calculator):
    """The spec for a structure with calculator settings of its own, or None if it has none.

    Parameters
    ----------
    atoms : Atoms
        Its ``info`` may hold ``WFL_CALCULATOR_INITIALIZER``, ``_ARGS`` and ``_KWARGS``.
    calculator : ase Calculator or tuple
        The operation's calculator; it must be a spec when the structure has settings.

    Raises
    ------
    TypeError
        The structure has settings but ``calculator`` is an instance (its arguments cannot
        be changed), or a setting is of the wrong type.
    """
    given = [key for key in STRUCTURE_KEYS if key in atoms.info]
    if not given:
        return None
    loc = atoms.info.get("_ConfigSet_loc")
    where = f"the structure at location {loc!r}" if loc else "a structure"
    if not is_spec(calculator):
        raise TypeError(f"{where[0].upper()}{where[1:]} has {given} in its info, but the calculator is an instance "
                        f"({type(calculator).__name__}), whose arguments cannot be changed; pass the calculator "
                        f"as a (constructor, args, kwargs) spec")
    constructor, args, kwargs = normalized(calculator)
    if INITIALIZER_KEY in atoms.info:
        constructor = _initializer(atoms.info[INITIALIZER_KEY], where)
    if ARGS_KEY in atoms.info:
        args = atoms.info[ARGS_KEY]
        if isinstance(args, (str, bytes, dict)) or not hasattr(args, "__iter__"):
            raise TypeError(f"{where}: info[{ARGS_KEY!r}] must be a list of positional arguments, "
                            f"not {type(args).__name__} {args!r}")
        args = tuple(args)
    if KWARGS_KEY in atoms.info:
        extra = atoms.info[KWARGS_KEY]
        if not isinstance(extra, dict):
            raise TypeError(f"{where}: info[{KWARGS_KEY!r}] must be a dict of keyword arguments, "
                            f"not {type(extra).__name__} {extra!r}")
        kwargs = {**kwargs, **extra}
    return constructor, args, kwargs


def _initializer(value, where):
    if callable(value):
        return value
    if isinstance(value, str):
        try:
            return import_callable(value)
        except (ImportError, AttributeError, ValueError) as exc:
            raise TypeError(f"{where}: info[{INITIALIZER_KEY!r}]: {exc}") from None
    raise TypeError(f"{where}: info[{INITIALIZER_KEY!r}] must be a callable or its 'module:name', "
                    f"not {type(value).__name__} {value!r}")


def import_callable(text):
    """The callable named ``"module:name"`` (``name`` may be dotted, ``Class.method``).

    Raises
    ------
    ValueError
        The text is not of that form, or names something that cannot be called.
    ImportError, AttributeError
        The module or the name inside it cannot be found.
    """
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{text!r} must be given as MODULE:NAME, e.g. ase.calculators.emt:EMT")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} of {text!r}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise ValueError(f"{text!r} is a {type(target).__name__}, not a calculator class or function")
    return target


def calculator_for(atoms, calculator):
    """The calculator to evaluate ``atoms`` with: its own if its info gives settings, else the call's.

    Both are built at most once per process and spec (a few are kept), so a chunk that
    alternates between two settings does not rebuild them each time.
    """
    spec = structure_spec(atoms, calculator)
    if spec is None:
        return construct_calculator(calculator)
    # settings that come back to the call's own spec reuse its warm calculator
    warm = _call_specs.find(spec)
    return warm if warm is not None else _structure_specs.get(spec)


def default_autopara_info(calculator, fallback):
    """The calculator's own ``wfl_generic_default_autopara_info`` (of the instance, or of the
    spec's constructor), else ``fallback``.

    Raises
    ------
    TypeError
        The attribute is not a dict.
    """
    owner = calculator[0] if is_spec(calculator) else calculator
    defaults = getattr(owner, "wfl_generic_default_autopara_info", None)
    if defaults is None:
        return dict(fallback)
    if not isinstance(defaults, dict):
        raise TypeError(f"{constructor_name(owner)}.wfl_generic_default_autopara_info must be a dict of "
                        f"AutoparaInfo options, not {type(defaults).__name__}")
    return dict(defaults)
