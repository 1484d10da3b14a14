"""Evaluate an ASE calculator on many structures: :func:`calculate`."""

import logging
import pickle

import numpy as np
from ase.calculators.calculator import all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from wfl_like.autoparallelize import autoparallelize, autoparallelize_docstring

log = logging.getLogger(__name__)

DEFAULT_PROPERTIES = ("energy", "forces", "stress")
AUTO_PREFIX = "_auto_"

# The calculator built from a (constructor, args, kwargs) spec in this process, kept so
# that a worker builds it once, not once per chunk.  One entry: a worker serves one call.
_built = {"key": None, "calculator": None}


def construct_calculator(calculator):
    """An ASE calculator from an instance or a ``(constructor, args, kwargs)`` spec.

    A spec is built once per process and reused by later chunks: an expensive
    potential is loaded once per worker.

    Parameters
    ----------
    calculator : ase.calculators.calculator.Calculator or tuple
        An instance, or ``(constructor, args)`` / ``(constructor, args, kwargs)``.

    Raises
    ------
    TypeError
        ``calculator`` is neither, or the spec builds something that is not a calculator.
    """
    _check_calculator_argument(calculator)
    if not isinstance(calculator, (tuple, list)):
        return calculator
    constructor, args = calculator[0], calculator[1] or ()
    kwargs = calculator[2] if len(calculator) == 3 and calculator[2] else {}
    try:
        key = pickle.dumps((constructor, tuple(args), sorted(kwargs.items())))
    except Exception:
        key = None     # unpicklable arguments: cannot tell specs apart, so build anew
    if key is None or key != _built["key"]:
        built = constructor(*args, **kwargs)
        if not hasattr(built, "get_property"):
            raise TypeError(f"the calculator spec's constructor {getattr(constructor, '__qualname__', constructor)!r} "
                            f"returned a {type(built).__name__}, not an ASE calculator")
        _built["calculator"] = built
        _built["key"] = key
    return _built["calculator"]


# ASE properties with one value per atom: stored in Atoms.arrays; the others in Atoms.info.
PER_ATOM_PROPERTIES = frozenset({"forces", "energies", "stresses", "magmoms", "charges"})


def _calculate_op(atoms_list, calculator, properties=None, output_prefix=AUTO_PREFIX,
                  raise_calc_exceptions=False):
    """Evaluate an ASE calculator on every structure.

    Results are stored with a prefix: ``info[prefix + "energy"]``,
    ``arrays[prefix + "forces"]``, ``info[prefix + "stress"]`` (other per-atom properties
    in ``arrays``, the rest in ``info``).  Stress is not asked of structures that are not
    periodic in all three directions, nor any property the calculator does not implement.
    A structure on which the calculator raises gets
    ``info[prefix + "calculation_failed"] = True`` and the run goes on.  Chunks of 10
    structures by default.

    Parameters
    ----------
    atoms_list : list of Atoms
        Structures to evaluate.
    calculator : ase Calculator or (constructor, args, kwargs)
        A calculator instance, or a picklable recipe built once per worker process
        (for calculators that cannot be pickled or are expensive to set up).
    properties : list of str, default ["energy", "forces", "stress"]
        Properties to compute.
    output_prefix : str or None, default "_auto_"
        Prefix of the stored keys; ``"_auto_"`` means the calculator's class name and ``_``
        (e.g. ``EMT_energy``); ``None`` attaches the results as a SinglePointCalculator
        instead (written by extended XYZ as plain ``energy``, ``forces``, ``stress``).
    raise_calc_exceptions : bool, default False
        Raise a calculator's exception instead of marking the structure as failed.
    """
    calc = construct_calculator(calculator)
    prefix = f"{type(calc).__name__}_" if output_prefix == AUTO_PREFIX else (output_prefix or "")
    wanted = _implemented(calc, DEFAULT_PROPERTIES if properties is None else properties)
    outputs = []
    for atoms in atoms_list:
        _forget_results(atoms, prefix, wanted)
        # stress is undefined without a cell periodic in every direction
        asked = [name for name in wanted if name != "stress" or atoms.pbc.all()]
        try:
            results = _evaluate(calc, atoms, asked)
        except Exception as exc:
            if raise_calc_exceptions:
                raise
            log.warning("calculation failed on structure %s: %s: %s",
                        atoms.info.get("_ConfigSet_loc", "?"), type(exc).__name__, exc)
            atoms.info[prefix + "calculation_failed"] = True
            results = {}
        if output_prefix is None:
            atoms.calc = SinglePointCalculator(atoms, **results) if results else None
        else:
            for name, value in results.items():
                (atoms.arrays if name in PER_ATOM_PROPERTIES else atoms.info)[prefix + name] = value
        outputs.append(atoms)
    return outputs


def _implemented(calc, properties):
    """The properties the calculator implements, with a warning for the others."""
    implemented = getattr(calc, "implemented_properties", None)
    if implemented is None:
        return list(properties)
    missing = [name for name in properties if name not in implemented]
    if missing:
        log.warning("calculator %s does not implement %s; not computed", type(calc).__name__, missing)
    return [name for name in properties if name in implemented]


def _evaluate(calc, atoms, properties):
    """All ``properties`` of ``atoms`` in one calculation, as copies."""
    # A calculator reused across structures may keep state (EMT keeps its neighbour
    # list); a reset makes each result independent of what the worker computed before,
    # so outputs are the same whatever the process count or chunk size.
    calc.reset()
    calc.calculate(atoms, properties, all_changes)
    missing = [name for name in properties if name not in calc.results]
    if missing:
        raise RuntimeError(f"calculator {type(calc).__name__} did not compute {missing}")
    return {name: np.array(calc.results[name]) if np.ndim(calc.results[name]) else calc.results[name]
            for name in properties}


def _forget_results(atoms, prefix, properties):
    """Remove earlier results under this prefix, so a failed calculation leaves no stale value."""
    atoms.calc = None
    atoms.info.pop(prefix + "calculation_failed", None)
    for name in properties:
        atoms.info.pop(prefix + name, None)
        atoms.arrays.pop(prefix + name, None)


def calculate(inputs, outputs, calculator, properties=None, output_prefix=AUTO_PREFIX, raise_calc_exceptions=False,
              autopara_info=None):
    _check_calculator_argument(calculator)
    check_properties(calculator, properties)
    return autoparallelize(_calculate_op, inputs, outputs, calculator, properties=properties,
                           output_prefix=output_prefix, raise_calc_exceptions=raise_calc_exceptions,
                           autopara_info=autopara_info,
                           default_autopara_info={"num_inputs_per_python_subprocess": 10})


def check_properties(calculator, properties):
    """Refuse, before any work, properties that are not a list of names ASE knows, or that
    the calculator implements none of.

    Parameters
    ----------
    calculator : ase Calculator or (constructor, args, kwargs)
        Its ``implemented_properties`` (of the instance, or of the constructor when it is a
        class) are checked when it has them.
    properties : list of str or None
        ``None`` stands for the defaults.

    Raises
    ------
    TypeError
        ``properties`` is a string or not a list of strings.
    ValueError
        It is empty, names properties ASE does not know, or none the calculator implements.
    """
    from ase.calculators.calculator import all_properties

    if properties is None:
        return
    if isinstance(properties, str):
        raise TypeError(f"properties must be a list of property names, not the string {properties!r}; "
                        f"write properties={[p.strip() for p in properties.split(',') if p.strip()]!r}")
    try:
        names = list(properties)
    except TypeError:
        raise TypeError(f"properties must be a list of property names, not {type(properties).__name__}") from None
    if not names:
        raise ValueError("properties is empty: name at least one (e.g. ['energy'])")
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"properties must be names (strings), not {names!r}")
    unknown = [name for name in names if name not in all_properties]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; ASE's properties are {list(all_properties)}")
    implemented = _implemented_by(calculator)
    if implemented is not None and not any(name in implemented for name in names):
        raise ValueError(f"calculator {_calculator_name(calculator)} implements none of the properties asked, "
                         f"{names}; it implements {list(implemented)}")


def _implemented_by(calculator):
    """The calculator's ``implemented_properties``, or None when it cannot be known before it is built."""
    if isinstance(calculator, (tuple, list)):
        constructor = calculator[0]
        return getattr(constructor, "implemented_properties", None) if isinstance(constructor, type) else None
    return getattr(calculator, "implemented_properties", None)


def _calculator_name(calculator):
    target = calculator[0] if isinstance(calculator, (tuple, list)) else type(calculator)
    return getattr(target, "__name__", repr(target))


def _check_calculator_argument(calculator):
    """Refuse, before any work, what can be neither a calculator nor a recipe for one."""
    if isinstance(calculator, (tuple, list)):
        if len(calculator) not in (2, 3) or not callable(calculator[0]):
            raise TypeError(f"a calculator spec must be (constructor, args) or (constructor, args, kwargs), "
                            f"not {calculator!r}")
    elif not hasattr(calculator, "get_property"):
        raise TypeError(f"calculator must be an ASE calculator or a (constructor, args, kwargs) tuple, "
                        f"not {type(calculator).__name__}")


autoparallelize_docstring(calculate, _calculate_op, "Atoms")
