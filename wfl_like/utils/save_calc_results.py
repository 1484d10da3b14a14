"""Keep a calculator's results with a structure, under prefixed keys: :func:`save_calc_results`."""

import logging

import numpy as np
from ase.calculators.calculator import PropertyNotPresent, all_properties
from ase.calculators.singlepoint import SinglePointCalculator

log = logging.getLogger(__name__)

# ASE properties with one value per atom: stored in Atoms.arrays; the others in Atoms.info.
PER_ATOM_PROPERTIES = frozenset({"forces", "energies", "stresses", "magmoms", "charges"})


def save_calc_results(atoms, *, prefix, properties=None):
    """Move the results of ``atoms.calc`` into ``atoms.info`` / ``atoms.arrays``.

    Results stored this way survive writing to extended XYZ and reading back, and do not
    clash with the plain ``energy``/``forces`` keys that ASE turns into a calculator.

    Parameters
    ----------
    atoms : ase.Atoms
        A structure whose calculator has results; afterwards ``atoms.calc`` is ``None``
        (or, with ``prefix=None``, a SinglePointCalculator holding copies of the results).
    prefix : str or None
        Keys become ``prefix + name``, e.g. ``"last_op__optimize_energy"``; earlier values
        under the prefix are removed first.  ``None`` keeps the results as a
        SinglePointCalculator instead.
    properties : list of str, optional
        The results to keep; default all the calculator has.  A calculator with a boolean
        ``converged`` attribute (an SCF's) also gets ``info[prefix + "converged"]``.

    Raises
    ------
    ValueError
        ``prefix`` is the empty string (the keys would be read back as a calculator's).
    ase.calculators.calculator.PropertyNotPresent
        ``properties`` names a result the calculator does not have.
    """
    if prefix == "":
        raise ValueError("results_prefix must not be empty: extended XYZ would read plain 'energy'/'forces' "
                         "keys back as a calculator's results; give a prefix, or None to keep a calculator")
    results = {} if atoms.calc is None else dict(atoms.calc.results)
    if properties is not None:
        missing = [name for name in properties if name not in results]
        if missing:
            raise PropertyNotPresent(f"properties {missing} were asked for but the calculator has no results for "
                                     f"them (it has {sorted(results)})")
        results = {name: results[name] for name in properties}
    results = {name: np.array(value) if np.ndim(value) else value for name, value in results.items()}
    if prefix is None:
        # a SinglePointCalculator takes only ASE's own property names; a calculator's extra
        # results (a model's per-node outputs, say) have no place there
        kept = {name: value for name, value in results.items() if name in all_properties}
        if len(kept) < len(results):
            log.warning("results %s are not ASE properties and cannot be kept in a SinglePointCalculator "
                        "(prefix=None); give a prefix to keep them", sorted(set(results) - set(kept)))
        atoms.calc = SinglePointCalculator(atoms, **kept) if kept else None
        return
    converged = getattr(atoms.calc, "converged", None)
    atoms.calc = None
    # a stale value of an earlier calculation under this prefix must not pass for a new one
    for name in set(all_properties) | set(results) | {"converged"}:
        atoms.info.pop(prefix + name, None)
        atoms.arrays.pop(prefix + name, None)
    for name, value in results.items():
        (atoms.arrays if name in PER_ATOM_PROPERTIES else atoms.info)[prefix + name] = value
    if isinstance(converged, (bool, np.bool_)):
        # DFT calculators say whether their SCF converged: a result worth keeping (wfl keeps it too)
        atoms.info[prefix + "converged"] = bool(converged)


def at_copy_save_calc_results(atoms, prefix, properties=None):
    """A copy of ``atoms`` holding its calculator's current results under ``prefix``.

    The structure itself keeps its calculator.  With a prefix of the form
    ``"<group>__<name>_"`` (``"last_op__optimize_"``), every key of the copy that starts
    with ``"<group>__"`` is dropped first, so that only the last operation's results are
    kept under that group (wfl's convention).

    Parameters
    ----------
    atoms : ase.Atoms
        A structure with a calculator.
    prefix : str or None
        As in :func:`save_calc_results`.
    properties : list of str, optional
        As in :func:`save_calc_results`.

    Returns
    -------
    ase.Atoms
        The copy, with no calculator (or a SinglePointCalculator when ``prefix`` is None).
    """
    copy = atoms.copy()
    copy.calc = atoms.calc
    if prefix and "__" in prefix:
        group = prefix[:prefix.index("__") + 2]
        for store in (copy.info, copy.arrays):
            for key in [key for key in store if key.startswith(group)]:
                del store[key]
    save_calc_results(copy, prefix=prefix, properties=properties)
    return copy
