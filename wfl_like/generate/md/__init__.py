"""Molecular dynamics of many structures, one trajectory per structure: :func:`md`.

The integrators are ASE's: ``"Berendsen"`` (NVT; NPT by volume rescaling when a pressure
is given), ``"Langevin"`` (NVT), ``"LangevinBAOAB"`` (NVT, NPT, NPH), and VelocityVerlet
(NVE) when there is no thermostat.  Everything random (a pressure drawn from a
distribution, the initial velocities, the Langevin noise) comes from the structure's own
generator, so a trajectory is the same whatever the process count, chunk size or backend.
Stopping conditions: :mod:`wfl_like.generate.md.abort`.
"""

import copy
import warnings

from wfl_like.autoparallelize import autoparallelize, autoparallelize_docstring
from wfl_like.calculators.spec import check_calculator_argument, construct_calculator
from wfl_like.generate.md import settings as md_settings
from wfl_like.generate.md.mdlogger import LoggerSetup
from wfl_like.generate.md.trajectory import run_trajectory

__all__ = ["md", "check_arguments"]

# One structure per chunk: a trajectory costs far more than sending it to a worker, and a
# failing structure then costs no rerun of its chunk-mates (wfl's default is 10).
DEFAULT_AUTOPARA_INFO = {"num_inputs_per_python_subprocess": 1}


def keep_every_frame(atoms):
    """The default ``traj_select_during_func``: every recorded frame is kept."""
    return True


def _md_op(atoms_list, calculator, steps, dt, integrator="Berendsen", temperature=None, temperature_tau=None,
           pressure=None, hydrostatic=True, pressure_tau=None, pressure_mass_factor=1, compressibility_au=None,
           compressibility_fd_displ=0.01, traj_step_interval=1, skip_failures=True, results_prefix="last_op__md_",
           verbose=False, update_config_type="append", traj_select_during_func=keep_every_frame,
           traj_select_after_func=None, abort_check=None, logger_interval=0, logger_kwargs=None,
           _autopara_per_item_info=None):
    """Run an MD trajectory from each structure and return its frames.

    Every ``traj_step_interval`` steps (from step 0, counted over all temperature stages),
    and at the last step, the structure is recorded: a copy with ``info["MD_step"]``,
    ``info["MD_time_fs"]``, ``info["MD_current_temperature"]`` (K, from the kinetic
    energy), ``info["MD_temperature_K"]`` (the thermostat's target, when there is one),
    ``info["MD_pressure_GPa"]`` (when a pressure is applied), its momenta, and the
    calculator's results under ``results_prefix``; it is kept if
    ``traj_select_during_func`` says so.  ``config_type`` gets ``"MD"`` as
    ``update_config_type`` says.  Any of the settings from ``integrator`` to
    ``update_config_type`` can be changed for one structure by its
    ``info["WFL_MD_KWARGS"]``: a dict, or its JSON text, e.g. ``'{"temperature": 600}'``.

    Parameters
    ----------
    atoms_list : list of Atoms
        Starting structures.
    calculator : ase Calculator or (constructor, args[, kwargs])
        A calculator, or a recipe built once per worker process.
    steps : int
        Number of MD steps.
    dt : float
        Time step, fs.
    integrator : {"Berendsen", "Langevin", "LangevinBAOAB"}, default "Berendsen"
        The thermostat (and barostat) when ``temperature_tau`` is given; without it the
        run is NVE (VelocityVerlet), or NPH with ``"LangevinBAOAB"`` and a pressure.
    temperature : float, (T_init, T_final[, n_stages]) or list of dict, optional
        Kelvin.  The velocities are drawn from a Maxwell-Boltzmann distribution at the
        (first) temperature, rescaled to it exactly, without net momentum.  With a
        thermostat it is also the target: a constant, a ramp in ``n_stages`` (default 10)
        equal segments, or stages ``{"T_i", "T_f", "traj_frac"[, "n_stages"]}`` each lasting
        ``traj_frac`` of the steps.  Without a thermostat only a constant is accepted.
    temperature_tau : float, optional
        Thermostat time scale, fs (Berendsen's ``taut``, 1/friction for Langevin, ``T_tau``
        for LangevinBAOAB).  None: no thermostat.
    pressure : float or tuple, optional
        GPa, as :func:`wfl_like.utils.pressure.sample_pressure` reads it (a distribution is
        drawn from the structure's generator).  Berendsen: volume rescaling (needs a
        thermostat, ``hydrostatic=True``); LangevinBAOAB: Langevin cell dynamics.
    hydrostatic : bool, default True
        False lets the cell change shape (LangevinBAOAB only).
    pressure_tau : float, optional
        Barostat time scale, fs; default three times ``temperature_tau``.
    pressure_mass_factor : float, default 1
        LangevinBAOAB's factor on its default cell mass.
    compressibility_au : float, optional
        Berendsen's compressibility, Angstrom^3/eV; default estimated for each structure
        from energies at strains of +-``compressibility_fd_displ``.
    compressibility_fd_displ : float, default 0.01
        The strain of that estimate.
    traj_step_interval : int, default 1
        Record a frame every this many steps.
    skip_failures : bool, default True
        When the dynamics raises (a calculator error, say): True keeps the frames recorded
        so far, the last marked ``info["MD_failed"]`` with the reason, and logs a warning.
        False, or a failure before the first frame, fails the structure: the other
        structures go on, and the failure is recorded as ``autopara_info``'s ``errors``
        says, whose default ``skip_failures`` sets: ``"skip"`` (left out, listed in the
        result's ``failures``, a ``FailedItemsWarning``) for True, ``"raise"``
        (``AutoparallelizeError`` once the others are done) for False.
    results_prefix : str or None, default "last_op__md_"
        Prefix of the stored results; a prefix ``"<a>__<b>"`` first removes every key
        starting with ``"<a>__"`` (earlier operations' results).  None keeps them as a
        SinglePointCalculator.
    verbose : bool, default False
        Log each temperature segment (logger ``wfl_like.generate.md``, level INFO).
    update_config_type : {"append", "overwrite", False}, default "append"
        How ``"MD"`` goes into ``info["config_type"]``.
    traj_select_during_func : callable, default keep every frame
        ``f(atoms) -> bool`` on each recorded step (the live structure, with its calculator).
    traj_select_after_func : callable, optional
        ``f(frames) -> frames`` on the whole trajectory at its end.
    abort_check : AbortBase, optional
        A condition (e.g. :class:`~wfl_like.generate.md.abort.AbortOnCollision`) checked on
        every recorded step; when it says stop, the trajectory ends there and its last
        frame is marked ``info["MD_aborted_by"]`` with the class name.  Each trajectory
        uses its own copy of the object.
    logger_interval : int, default 0
        Attach ASE's MD logger every this many steps (0: none).
    logger_kwargs : dict, optional
        Its keyword arguments; ``"logger"`` a logger class (default ``ase.md.MDLogger``),
        ``"logfile"`` a name to which ``".config_<item index>"`` is added, or ``"-"``
        (default) for standard output with lines starting ``"config <item index> "``.
    rng : numpy.random.Generator, optional
        Needed for a temperature (velocities, Langevin noise) or a random pressure; each
        structure gets its own generator spawned from it, in input order.
    """
    calc = construct_calculator(calculator)
    given = {name: value for name, value in locals().items() if name in md_settings.DEFAULTS}
    logger = LoggerSetup(logger_interval, logger_kwargs)
    infos = _autopara_per_item_info or [{"item_i": i} for i in range(len(atoms_list))]
    trajectories = []
    for atoms, info in zip(atoms_list, infos):
        item_i = info.get("item_i")
        settings = md_settings.with_overrides(given, atoms, item_i)
        md_settings.check(settings, steps, dt)
        # copies: a rerun of this item (its chunk split after a chunk-mate failed, in the
        # calling process) must start from the same structure and the same random state
        rng = copy.deepcopy(info.get("rng"))
        # and each trajectory its own copies of stateful callables, so that what one
        # trajectory saw cannot change another's frames (which would depend on chunking)
        trajectories.append(run_trajectory(atoms.copy(), calc, steps, dt, settings, rng, item_i,
                                           copy.deepcopy(traj_select_during_func),
                                           copy.deepcopy(traj_select_after_func),
                                           copy.deepcopy(abort_check), logger))
    return trajectories


def md(inputs, outputs, calculator, steps, dt, integrator="Berendsen", temperature=None, temperature_tau=None,
       pressure=None, hydrostatic=True, pressure_tau=None, pressure_mass_factor=1, compressibility_au=None,
       compressibility_fd_displ=0.01, traj_step_interval=1, skip_failures=True, results_prefix="last_op__md_",
       verbose=False, update_config_type="append", traj_select_during_func=keep_every_frame,
       traj_select_after_func=None, abort_check=None, logger_interval=0, logger_kwargs=None, rng=None,
       autopara_info=None):
    settings = {name: value for name, value in locals().items() if name in md_settings.DEFAULTS}
    _check_arguments(settings, calculator, steps, dt, traj_select_during_func, traj_select_after_func,
                     abort_check, rng)
    LoggerSetup(logger_interval, logger_kwargs)
    if logger_kwargs and not logger_interval:
        warnings.warn("logger_kwargs is not used: logger_interval is 0 (no MD log); set logger_interval >= 1",
                      stacklevel=2)
    return autoparallelize(_md_op, inputs, outputs, calculator, steps, dt, **settings,
                           traj_select_during_func=traj_select_during_func,
                           traj_select_after_func=traj_select_after_func, abort_check=abort_check,
                           logger_interval=logger_interval, logger_kwargs=logger_kwargs, rng=rng,
                           autopara_info=autopara_info,
                           default_autopara_info={**DEFAULT_AUTOPARA_INFO,
                                                  "errors": "skip" if skip_failures else "raise"})


def check_arguments(calculator, steps, dt, rng=None, traj_select_during_func=keep_every_frame,
                    traj_select_after_func=None, abort_check=None, **settings):
    """Refuse, before any work, arguments of :func:`md` that no structure could run with.

    Takes :func:`md`'s arguments of the same names (a command line checks its own with
    it); ``settings`` are those a structure may override (``integrator``, ``temperature``...).

    Raises
    ------
    TypeError, ValueError
        Naming the argument and what to give instead.
    """
    unknown = sorted(set(settings) - set(md_settings.DEFAULTS))
    if unknown:
        raise TypeError(f"md takes no arguments {unknown}")
    _check_arguments({**md_settings.DEFAULTS, **settings}, calculator, steps, dt, traj_select_during_func,
                     traj_select_after_func, abort_check, rng)


def _check_arguments(settings, calculator, steps, dt, select_during, select_after, abort_check, rng):
    """Refuse, before any work, what no structure could run with."""
    check_calculator_argument(calculator)
    md_settings.check(settings, steps, dt)
    if not callable(select_during):
        raise TypeError(f"traj_select_during_func must be a function of one Atoms, not {select_during!r}")
    if select_after is not None and not callable(select_after):
        raise TypeError(f"traj_select_after_func must be a function of a list of Atoms or None, not {select_after!r}")
    if isinstance(abort_check, type):
        # the class itself: its unbound stop() fails on every step, which would end each
        # trajectory at its first frame as "MD_failed"
        raise TypeError(f"abort_check must be an instance, e.g. {abort_check.__name__}(...), not the class "
                        f"{abort_check.__name__}")
    if abort_check is not None and not callable(getattr(abort_check, "stop", None)):
        raise TypeError(f"abort_check must be an AbortBase (wfl_like.generate.md.abort_base) or None, "
                        f"not {type(abort_check).__name__}")
    if rng is None and md_settings.needs_rng(settings):
        raise ValueError("md at a temperature or a random pressure draws random numbers (velocities, Langevin "
                         "noise, the pressure): pass rng= "
                         "(numpy.random.default_rng(seed)); each structure gets its own stream from it")
    scheduled = md_settings.scheduled_steps(settings, steps)
    if scheduled != steps:
        warnings.warn(f"md: temperature {settings['temperature']!r} runs {scheduled} steps, not steps={steps}: each "
                      f"stage's steps are rounded (as wfl rounds them)", stacklevel=3)
    unused = md_settings.unused(settings)
    if unused:
        pressure = settings["pressure"]
        ensemble = f"pressure {pressure!r}" if pressure is not None else "no pressure"
        nve = "; without temperature_tau there is no thermostat: the run is NVE" if "integrator" in unused else ""
        warnings.warn(f"md: {unused} not used by this run ({settings['integrator']}, {ensemble}){nve}", stacklevel=3)


autoparallelize_docstring(md, _md_op, "Atoms")
