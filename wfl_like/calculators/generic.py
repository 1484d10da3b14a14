"""Evaluate an ASE calculator on many structures: :func:`calculate`."""

import logging

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from wfl_like.autoparallelize import autoparallelize, autoparallelize_docstring
from wfl_like.calculators.spec import (calculator_for, check_calculator_argument, constructor_name,
                                       construct_calculator, default_autopara_info, is_spec)
from wfl_like.utils.save_calc_results import PER_ATOM_PROPERTIES

log = logging.getLogger(__name__)

DEFAULT_PROPERTIES = ("energy", "forces", "stress")
AUTO_PREFIX = "_auto_"
DEFAULT_AUTOPARA_INFO = {"num_inputs_per_python_subprocess": 10}

__all__ = ["calculate", "check_properties", "construct_calculator"]



def _calculate_op(atoms_list, calculator, properties=None, output_prefix=AUTO_PREFIX, verbose=False,
                  raise_calc_exceptions=False):
    """Evaluate an ASE calculator on every structure.

    Results are stored with a prefix: ``info[prefix + "energy"]``,
    ``arrays[prefix + "forces"]``, ``info[prefix + "stress"]`` (other per-atom properties
    in ``arrays``, the rest in ``info``).  Stress (and ``stresses``) is not asked of
    structures that are not periodic in all three directions, nor any property the
    calculator does not implement.
    A structure on which the calculator raises gets
    ``info[prefix + "calculation_failed"] = True`` and the run goes on.  Chunks of 10
    structures by default, or what the calculator's ``wfl_generic_default_autopara_info``
    says (a DFT calculator may ask for chunks of 1).

    A structure whose ``info`` has ``"WFL_CALCULATOR_INITIALIZER"`` (a constructor, or its
    ``"module:name"``), ``"WFL_CALCULATOR_ARGS"`` (a list) or ``"WFL_CALCULATOR_KWARGS"``
    (a dict) is evaluated with a calculator of its own: the first two replace those parts of
    the spec, the last updates the spec's keyword arguments.  Those entries are kept in the
    outputs, as wfl keeps them.

    Parameters
    ----------
    atoms_list : list of Atoms
        Structures to evaluate.
    calculator : ase Calculator or (constructor, args, kwargs)
        A calculator instance, or a picklable recipe built once per worker process
        (for calculators that cannot be pickled or are expensive to set up);
        ``constructor`` is any callable returning a calculator (a class, or a factory
        function such as ``mace_mp``).  Must be a recipe if structures give settings of
        their own.
    properties : list of str, default ["energy", "forces", "stress"]
        Properties to compute.
    output_prefix : str or None, default "_auto_"
        Prefix of the stored keys; ``"_auto_"`` means the name of the calculator's class
        (of an instance) or of the spec's constructor, and ``_`` (e.g. ``EMT_energy``),
        the same for every structure; ``None`` attaches the results as a
        SinglePointCalculator instead (written by extended XYZ as plain ``energy``,
        ``forces``, ``stress``).
    verbose : bool, default False
        Log (at INFO level) each structure evaluated and the calculator used.
    raise_calc_exceptions : bool, default False
        Raise a calculator's exception instead of marking the structure as failed.
    """
    prefix = _prefix(calculator, output_prefix)
    asked = DEFAULT_PROPERTIES if properties is None else properties
    # id of a calculator -> (it, the asked properties it implements): asked once per
    # calculator, and the reference keeps the id from being reused by another
    wanted_by = {}
    outputs = []
    for atoms in atoms_list:
        calc = calculator_for(atoms, calculator)
        if id(calc) not in wanted_by:
            wanted_by[id(calc)] = (calc, _implemented(calc, asked))
        wanted = wanted_by[id(calc)][1]
        _forget_results(atoms, prefix, wanted)
        if verbose:
            log.info("evaluating structure %s with %s", atoms.info.get("_ConfigSet_loc", "?"), type(calc).__name__)
        outputs.append(_evaluate_one(atoms, calc, wanted, prefix, output_prefix is None, raise_calc_exceptions))
    return outputs


def _run_autopara_wrappable(atoms, *args, **kwargs):
    """wfl's name for the operation, which scripts call directly, on one structure or a list:
    the same result type back."""
    if isinstance(atoms, Atoms):
        return _calculate_op([atoms], *args, **kwargs)[0]
    return _calculate_op(list(atoms), *args, **kwargs)


def _prefix(calculator, output_prefix):
    if output_prefix != AUTO_PREFIX:
        return output_prefix or ""
    # as wfl: named after the spec's constructor (or the instance's class), not after what
    # each structure's own settings build, so every structure has its results under one name
    return constructor_name(calculator[0] if is_spec(calculator) else type(calculator)) + "_"


def _evaluate_one(atoms, calc, wanted, prefix, as_single_point, raise_calc_exceptions):
    """``atoms`` with the results of ``calc`` stored, or marked as failed."""
    # stress (and per-atom stresses) is undefined without a cell periodic in every direction
    asked = [name for name in wanted if name not in ("stress", "stresses") or atoms.pbc.all()]
    try:
        results = _evaluate(calc, atoms, asked)
    except Exception as exc:
        if raise_calc_exceptions:
            raise
        log.warning("calculation failed on structure %s: %s: %s",
                    atoms.info.get("_ConfigSet_loc", "?"), type(exc).__name__, exc)
        atoms.info[prefix + "calculation_failed"] = True
        results = {}
    if as_single_point:
        atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    else:
        for name, value in results.items():
            (atoms.arrays if name in PER_ATOM_PROPERTIES else atoms.info)[prefix + name] = value
        converged = getattr(calc, "converged", None)
        if results and isinstance(converged, (bool, np.bool_)):
            # a DFT calculator says whether its SCF converged: kept, as save_calc_results keeps it
            atoms.info[prefix + "converged"] = bool(converged)
    return atoms


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
    atoms.info.pop(prefix + "converged", None)
    for name in properties:
        atoms.info.pop(prefix + name, None)
        atoms.arrays.pop(prefix + name, None)


def calculate(inputs, outputs, calculator, properties=None, output_prefix=AUTO_PREFIX, verbose=False,
              raise_calc_exceptions=False, autopara_info=None):
    check_calculator_argument(calculator)
    check_properties(calculator, properties)
    return autoparallelize(_calculate_op, inputs, outputs, calculator, properties=properties,
                           output_prefix=output_prefix, verbose=verbose,
                           raise_calc_exceptions=raise_calc_exceptions, autopara_info=autopara_info,
                           default_autopara_info=default_autopara_info(calculator, DEFAULT_AUTOPARA_INFO))


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


autoparallelize_docstring(calculate, _calculate_op, "Atoms")
