"""Relax many structures with ASE's PreconLBFGS: :func:`optimize` (wfl's ``wfl.generate.optimize``).

Each input gives its trajectory (or, with ``traj_subselect``, a selection of it); frames
carry the calculator's results under ``results_prefix`` and say where in the run they
were taken (``info["optimize_config_type"]``).
"""

import copy
import inspect
import logging
import numbers
import warnings

import ase.units
import numpy as np
from ase.filters import FrechetCellFilter
from ase.optimize.precon import PreconLBFGS

from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.finite import FiniteResults
from wfl_like.calculators.spec import check_calculator_argument, construct_calculator
from wfl_like.generate.utils import check_config_type_action, save_config_type
from wfl_like.utils.pressure import check_pressure, sample_pressure
from wfl_like.utils.save_calc_results import at_copy_save_calc_results

log = logging.getLogger(__name__)

DEFAULT_RESULTS_PREFIX = "last_op__optimize_"
# What subselect_from_traj can keep of a trajectory.
SUBSELECT_RULES = (None, "last", "last_converged")
# Tolerance (Angstrom) of the symmetry kept by keep_symmetry, and of the space groups logged.
SYMPREC = 0.01
# Structures per chunk unless autopara_info says otherwise, as wfl.
DEFAULT_CHUNK_SIZE = 10


def optimize(inputs, outputs, calculator, fmax=1.0e-3, smax=None, steps=1000, pressure=None, stress_mask=None,
             keep_symmetry=True, traj_step_interval=1, traj_subselect=None, skip_failures=True,
             results_prefix=DEFAULT_RESULTS_PREFIX, verbose=False, update_config_type="append", rng=None,
             autopara_info=None, **opt_kwargs):
    """Relax every structure with ASE's PreconLBFGS, at fixed cell or at a given pressure.

    Parameters
    ----------
    inputs : iterable of Atoms
        Input structures, usually a ConfigSet.
    outputs : OutputSpec or None
        Where the trajectories go: one list of frames per input, one location level below it.
    calculator : ase Calculator or (constructor, args, kwargs)
        A calculator, or a picklable recipe for one, built once per worker process and
        reused by all its chunks (an ML potential is loaded once per worker).
    fmax : float, default 1e-3
        Converged when no atom's force exceeds this (eV/Angstrom).
    smax : float, optional
        With ``pressure``: also converged only when no component of the stress, less the
        applied pressure, exceeds this (eV/Angstrom^3).  Default: the number ``fmax``.
    steps : int, default 1000
        Most optimizer steps per structure.
    pressure : float or tuple, optional
        Relax the cell too (ASE's ``FrechetCellFilter``) under this pressure in GPa: a number,
        or a distribution as :func:`wfl_like.utils.pressure.sample_pressure` reads it, drawn
        from each structure's own generator (give ``rng``).  The value used is kept in
        ``info["optimize_pressure_GPa"]``.  Default: fixed cell.
    stress_mask : sequence of 6 bools or 3x3 bools, optional
        Which cell degrees of freedom may relax (``FrechetCellFilter``'s ``mask``); needs ``pressure``.
    keep_symmetry : bool, default True
        Keep the space group each structure starts with (ASE's ``FixSymmetry``, tolerance
        0.01 Angstrom; positions are symmetrized at the start, the cell is not).
    traj_step_interval : int, default 1
        Keep every this-many steps' frame (the first and the last always).
    traj_subselect : {None, "last", "last_converged"}, default None
        What to keep of each trajectory (:func:`subselect_from_traj`): all of it; its last
        frame; its last frame only if the relaxation converged (else nothing for that structure).
    skip_failures : bool, default True
        A structure whose relaxation raises (the calculator fails, say) is a failed item of
        the run: left out of the outputs, listed in ``result.failures`` with its reason, and
        the run goes on.  With ``False`` the call raises
        :class:`~wfl_like.errors.AutoparallelizeError` naming it, once every other
        structure is done.  (``autopara_info={"errors": ...}``, if given, decides instead.)
    results_prefix : str, default "last_op__optimize_"
        Calculator results go to ``info``/``arrays`` keys with this prefix; other keys of
        the group before ``__`` (``last_op__``) are removed from the frames.
    verbose : bool, default False
        Log the optimizer's steps to standard output (unless ``logfile`` is given) and the
        space groups at the start and end (logging, INFO).
    update_config_type : {"append", "overwrite", False}, default "append"
        How each frame's ``optimize_config_type`` goes into its ``info["config_type"]``.
    rng : numpy.random.Generator, optional
        Gives every structure a generator of its own, for random pressures: the same
        outputs whatever the number of processes or the chunk size.
    autopara_info : AutoparaInfo or dict, optional
        How to parallelize (default: chunks of 10 structures).
    **opt_kwargs
        Passed to ``PreconLBFGS`` (e.g. ``precon=None``, ``logfile="-"``, ``maxstep``).

    Returns
    -------
    ConfigSet or None
        The output frames (None when outputs is None).  Each frame has the calculator's
        results under ``results_prefix``, ``info["optimize_config_type"]`` (one of
        ``optimize_initial``, ``optimize_mid``, ``optimize_last_converged``,
        ``optimize_last_unconverged``), and the last one ``info["optimize_n_steps"]``.

    Raises
    ------
    TypeError, ValueError
        Before any work, for an argument that cannot be used.
    """
    check_arguments(calculator, fmax=fmax, smax=smax, steps=steps, pressure=pressure, stress_mask=stress_mask,
                    traj_step_interval=traj_step_interval, traj_subselect=traj_subselect,
                    results_prefix=results_prefix, update_config_type=update_config_type, rng=rng, **opt_kwargs)
    defaults = {"num_inputs_per_python_subprocess": DEFAULT_CHUNK_SIZE,
                "errors": "skip" if skip_failures else "raise"}
    return autoparallelize(_optimize_op, inputs, outputs, calculator, fmax=fmax, smax=smax, steps=steps,
                           pressure=pressure, stress_mask=stress_mask, keep_symmetry=keep_symmetry,
                           traj_step_interval=traj_step_interval, traj_subselect=traj_subselect,
                           results_prefix=results_prefix, verbose=verbose, update_config_type=update_config_type,
                           rng=rng, autopara_info=autopara_info, default_autopara_info=defaults, **opt_kwargs)


def check_arguments(calculator, fmax=1.0e-3, smax=None, steps=1000, pressure=None, stress_mask=None,
                    traj_step_interval=1, traj_subselect=None, results_prefix=DEFAULT_RESULTS_PREFIX,
                    update_config_type="append", rng=None, **opt_kwargs):
    """Refuse, before any work, arguments of :func:`optimize` that no structure could relax with.

    Takes :func:`optimize`'s arguments of the same names (a command line checks its own with it).

    Raises
    ------
    TypeError, ValueError
        Naming the argument and what to give instead.
    """
    check_calculator_argument(calculator)
    needs_rng = _check_optimize_arguments(fmax, smax, steps, pressure, stress_mask, traj_step_interval,
                                          traj_subselect, update_config_type)
    _check_results_prefix(results_prefix)
    _check_optimizer_kwargs(opt_kwargs)
    if needs_rng and rng is None:
        raise ValueError(f"pressure {pressure!r} is drawn at random: pass rng=numpy.random.default_rng(seed) "
                         f"so that each structure draws from a generator of its own")


def _check_optimize_arguments(fmax, smax, steps, pressure, stress_mask, traj_step_interval, traj_subselect,
                              update_config_type):
    """Refuse unusable arguments before any work; whether ``pressure`` is random."""
    for name, value in (("fmax", fmax), ("smax", smax)):
        if value is None and name == "smax":
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, not {value!r}")
    for name, value, least in (("steps", steps, 0), ("traj_step_interval", traj_step_interval, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
    _check_subselect(traj_subselect)
    check_config_type_action(update_config_type)
    if stress_mask is not None and pressure is None:
        warnings.warn("stress_mask is not used: the cell relaxes only when pressure is given", stacklevel=3)
    if stress_mask is not None and (np.shape(stress_mask) not in ((6,), (3, 3))
                                    or not all(isinstance(flag, (bool, np.bool_)) for flag in np.ravel(stress_mask))):
        raise ValueError(f"stress_mask must be 6 or 3x3 booleans, not {stress_mask!r}")
    return pressure is not None and check_pressure(pressure)


def _check_results_prefix(results_prefix):
    # checked here, not in each structure's relaxation, where every structure would fail the same way
    if results_prefix == "":
        raise ValueError("results_prefix must not be empty (plain 'energy'/'forces' keys would be read back as a "
                         "calculator's results); give a prefix, or None to keep a SinglePointCalculator")
    if results_prefix is not None and not isinstance(results_prefix, str):
        raise TypeError(f"results_prefix must be a string or None, not {results_prefix!r}")


def optimizer_keywords():
    """The keyword arguments ``PreconLBFGS`` (and the ASE classes it passes them on to) takes."""
    names = set()
    for cls in PreconLBFGS.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names - {"self", "atoms"}


def _check_optimizer_kwargs(opt_kwargs):
    # a misspelt keyword would otherwise fail every structure, each in its worker
    unknown = sorted(set(opt_kwargs) - optimizer_keywords())
    if unknown:
        raise TypeError(f"optimize got keyword arguments {unknown} that neither optimize nor PreconLBFGS takes; "
                        f"PreconLBFGS takes {sorted(optimizer_keywords())}")


def _optimize_op(atoms_list, calculator, fmax=1.0e-3, smax=None, steps=1000, pressure=None, stress_mask=None,
                 keep_symmetry=True, traj_step_interval=1, traj_subselect=None,
                 results_prefix=DEFAULT_RESULTS_PREFIX, verbose=False, update_config_type="append",
                 _autopara_per_item_info=None, **opt_kwargs):
    """Relax each structure; one trajectory (or its selection, or None) per structure.

    A relaxation that raises raises here: the engine then runs this chunk's structures
    one by one and records the one that fails.
    """
    calc = construct_calculator(calculator)
    settings = dict(fmax=fmax, smax=fmax if smax is None else smax, steps=steps, pressure=pressure,
                    stress_mask=stress_mask, keep_symmetry=keep_symmetry, interval=traj_step_interval,
                    prefix=results_prefix, verbose=verbose, opt_kwargs=_optimizer_kwargs(opt_kwargs, verbose))
    outputs = []
    for k, atoms in enumerate(atoms_list):
        item = _autopara_per_item_info[k] if _autopara_per_item_info else {}
        traj = _relax(atoms, calc, rng=item.get("rng"), **settings)
        for frame in traj:
            save_config_type(frame, update_config_type, frame.info["optimize_config_type"])
        outputs.append(subselect_from_traj(traj, traj_subselect))
    return outputs


def _optimizer_kwargs(opt_kwargs, verbose):
    # master=True: under MPI every rank relaxes structures of its own and may log them
    kwargs = {"logfile": None, "master": True, **opt_kwargs}
    if kwargs["logfile"] is None and verbose:
        kwargs["logfile"] = "-"
    return kwargs


def _relax(atoms, calc, fmax, smax, steps, pressure, stress_mask, keep_symmetry, interval, prefix, verbose,
           opt_kwargs, rng):
    """The trajectory of one relaxation, its frames labelled; ``atoms`` is left relaxed, without calculator."""
    own_constraints = atoms.constraints
    # a calculator reused across structures may keep state from the last one (EMT keeps
    # its neighbour list): a reset makes each relaxation independent of the chunking
    calc.reset()
    # NaN results would hang ASE's line search: they fail the structure instead
    atoms.calc = FiniteResults(calc)
    try:
        if keep_symmetry:
            _add_symmetry_constraint(atoms, verbose)
        target = atoms
        if pressure is not None:
            pressure_GPa = sample_pressure(pressure, atoms, rng=rng)
            atoms.info["optimize_pressure_GPa"] = pressure_GPa
            target = FrechetCellFilter(atoms, scalar_pressure=pressure_GPa * ase.units.GPa, mask=stress_mask)
        atoms.info["optimize_config_type"] = "optimize_mid"
        recorder = _Recorder(atoms, prefix, own_constraints, variable_cell=pressure is not None)
        # closed at once: a logfile it opened must not stay open until garbage collection
        with PreconLBFGS(target, **opt_kwargs) as optimizer:
            optimizer.attach(recorder.record, interval=interval)
            converged = optimizer.run(fmax=fmax, smax=smax, steps=steps)
        recorder.record()        # the last frame, whatever the interval
        traj = recorder.frames
        if keep_symmetry:
            _log_space_group("final", traj[-1], verbose)
    finally:
        atoms.calc = None
        atoms.set_constraint(own_constraints)
    traj[0].info["optimize_config_type"] = "optimize_initial"
    traj[-1].info["optimize_config_type"] = f"optimize_last_{'converged' if converged else 'unconverged'}"
    traj[-1].info["optimize_n_steps"] = optimizer.get_number_of_steps()
    return traj


class _Recorder:
    """Collects copies of a relaxing structure, with the calculator's results, as the optimizer steps."""

    def __init__(self, atoms, prefix, constraints, variable_cell):
        self.atoms, self.prefix, self.constraints = atoms, prefix, constraints
        self.variable_cell = variable_cell
        self.frames = []

    def record(self):
        atoms = self.atoms
        min_volume = atoms.info.get("RSS_min_vol_per_atom")
        if min_volume is not None and atoms.get_volume() / len(atoms) < min_volume:
            raise RuntimeError(f"volume per atom {atoms.get_volume() / len(atoms):g} A^3 fell under "
                               f"info['RSS_min_vol_per_atom'] = {min_volume:g}")
        if self.frames and self.frames[-1] == atoms:
            # the same structure again (the optimizer did not move it, or this is the
            # last frame, already taken at its step): one frame is enough
            return
        self._refresh_results()
        frame = at_copy_save_calc_results(atoms, prefix=self.prefix)
        # its own copies: frames must not share constraint objects
        frame.set_constraint(copy.deepcopy(self.constraints))
        self.frames.append(frame)

    def _refresh_results(self):
        # the calculator's results must be those of this very structure: a line search
        # may have evaluated other positions since
        atoms = self.atoms
        if atoms.calc.check_state(atoms) or "forces" not in atoms.calc.results:
            atoms.get_forces()
            if self.variable_cell:
                atoms.get_stress()


def _add_symmetry_constraint(atoms, verbose):
    from ase.constraints import FixSymmetry

    _log_space_group("initial", atoms, verbose)
    atoms.set_constraint([*atoms.constraints, FixSymmetry(atoms, symprec=SYMPREC, adjust_cell=False)])


def _log_space_group(when, atoms, verbose):
    from ase.spacegroup.symmetrize import check_symmetry

    dataset = check_symmetry(atoms, SYMPREC)
    group = "none found" if dataset is None else f"{dataset.number} ({dataset.international})"
    log.log(logging.INFO if verbose else logging.DEBUG, "%s space group of structure %s: %s (symprec %g)",
            when, atoms.info.get("_ConfigSet_loc", "?"), group, SYMPREC)


def subselect_from_traj(traj, subselect=None):
    """Keep part of an optimization trajectory.

    Parameters
    ----------
    traj : list of Atoms
        Frames, the last with ``info["optimize_config_type"]``.
    subselect : {None, "last", "last_converged"}
        ``None``: the whole trajectory; ``"last"``: its last frame; ``"last_converged"``:
        its last frame if it is ``optimize_last_converged``, else ``None``.

    Returns
    -------
    list of Atoms, Atoms or None

    Raises
    ------
    NotImplementedError
        ``subselect`` is a number of frames (wfl reserves this form, and has not made it either).
    ValueError
        ``subselect`` is none of these.
    """
    _check_subselect(subselect)
    if subselect is None:
        return traj
    last = traj[-1]
    if subselect == "last":
        return last
    return last if last.info.get("optimize_config_type") == "optimize_last_converged" else None


def _check_subselect(subselect):
    if isinstance(subselect, numbers.Integral) and not isinstance(subselect, bool):
        raise NotImplementedError(f"traj_subselect={subselect!r}: selecting a number of frames is not implemented; "
                                  f"use one of {SUBSELECT_RULES}")
    if subselect not in SUBSELECT_RULES:
        raise ValueError(f"traj_subselect must be one of {SUBSELECT_RULES}, not {subselect!r}")


# wfl's name for the operation, which some scripts call directly on a list of structures
_run_autopara_wrappable = _optimize_op
