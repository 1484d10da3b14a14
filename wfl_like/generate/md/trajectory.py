"""One structure's MD run, from its settings to its list of frames: :func:`run_trajectory`."""

import contextlib
import logging

from ase.md.velocitydistribution import Stationary
from ase.units import GPa

from wfl_like.calculators.finite import FiniteResults
from wfl_like.generate.md import stages
from wfl_like.generate.md.frames import ABORTED_KEY, FAILED_KEY, TARGET_T_KEY, AbortTrajectory, FrameRecorder
from wfl_like.generate.md.integrators import SERIAL, describe, make_dynamics
from wfl_like.generate.md.settings import needs_rng
from wfl_like.generate.utils import save_config_type
from wfl_like.utils.pressure import sample_pressure

log = logging.getLogger("wfl_like.generate.md")

PRESSURE_KEY = "MD_pressure_GPa"


def run_trajectory(atoms, calculator, steps, dt, settings, rng, item_i, select_during, select_after,
                   abort_check, logger):
    """Run MD from ``atoms`` (changed in place) and return its frames.

    Parameters
    ----------
    atoms : ase.Atoms
        A copy of the input structure.
    calculator : ase Calculator
    steps, dt
        Number of steps, time step (fs).
    settings : dict
        Checked settings of this structure.
    rng : numpy.random.Generator or None
        The structure's own generator: pressure draw, velocities, Langevin noise, in this order.
    item_i : int
        The structure's index in the inputs, for messages and log files.
    select_during, select_after, abort_check
        As md's ``traj_select_during_func``, ``traj_select_after_func``, ``abort_check``
        (this trajectory's own copy).
    logger : :class:`~wfl_like.generate.md.mdlogger.LoggerSetup`
        Attaches the MD logger, if any.

    Returns
    -------
    list of ase.Atoms
    """
    if needs_rng(settings) and rng is None:
        raise ValueError(f"structure {item_i}: MD at a temperature draws random velocities: pass rng= "
                         f"(numpy.random.default_rng(seed)) to md")
    if callable(getattr(calculator, "reset", None)):
        calculator.reset()       # a warm calculator must not carry state from the previous structure
    # NaN forces would otherwise give a trajectory of NaN positions, stored as if it had run
    atoms.calc = FiniteResults(calculator)
    pressure_au, compressibility_au = _pressure(atoms, settings, rng)
    schedule = [(None, steps)]
    if settings["temperature"] is not None:
        _thermalize(atoms, stages.initial_temperature(settings["temperature"]), rng)
        if settings["temperature_tau"] is not None:
            schedule = stages.segments(settings["temperature"], steps)
    dynamics = make_dynamics(atoms, dt, settings, schedule[0][0], pressure_au, compressibility_au, rng)
    recorder = FrameRecorder(dynamics, atoms, dt, settings["traj_step_interval"], settings["results_prefix"],
                             select_during, abort_check)
    dynamics.attach(recorder, interval=1)
    with contextlib.ExitStack() as closing:
        logger.attach(dynamics, atoms, item_i, closing)
        ended = _run_schedule(dynamics, atoms, schedule, recorder, settings, item_i)
    frames = recorder.frames
    if ended is None:
        recorder.take_last()
    elif frames:
        frames[-1].info.update(ended)
    frames = list(select_after(frames)) if select_after is not None else frames
    for frame in frames:
        save_config_type(frame, settings["update_config_type"], "MD")
    return frames


def _run_schedule(dynamics, atoms, schedule, recorder, settings, item_i):
    """Run every segment; None when all ran, else the info marking how the trajectory ended."""
    try:
        for index, (temperature, n_steps) in enumerate(schedule):
            if index > 0 and n_steps == 0:
                continue      # rounded to nothing: it would only log its first step again
            if temperature is not None:
                dynamics.set_temperature(temperature_K=temperature)
                atoms.info[TARGET_T_KEY] = temperature
            if settings["verbose"]:
                log.info("structure %d: %s for %d steps at %s K", item_i, describe(settings), n_steps, temperature)
            dynamics.run(steps=n_steps)
    except AbortTrajectory as stop:
        log.info("structure %d: MD stopped at step %d by %s", item_i, dynamics.nsteps, stop)
        return {ABORTED_KEY: str(stop)}
    except Exception as exc:
        # with skip_failures the frames made before the failure are kept (wfl's way); a
        # failure before the first frame leaves nothing to keep, and fails the item
        if not settings["skip_failures"] or not recorder.frames:
            raise
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("structure %d: MD failed at step %d (%s); keeping its %d frames before the failure",
                    item_i, dynamics.nsteps, reason, len(recorder.frames))
        return {FAILED_KEY: reason}
    return None


def _pressure(atoms, settings, rng):
    """``(pressure in eV/A^3, compressibility in A^3/eV)``, both None at constant volume."""
    if settings["pressure"] is None:
        return None, None
    pressure_gpa = sample_pressure(settings["pressure"], atoms, rng)
    atoms.info[PRESSURE_KEY] = pressure_gpa
    compressibility = settings["compressibility_au"]
    if describe(settings) == "NPTBerendsen" and compressibility is None:
        compressibility = estimate_compressibility(atoms, settings["compressibility_fd_displ"])
    return pressure_gpa * GPa, compressibility


def estimate_compressibility(atoms, strain):
    """The isothermal compressibility ``1/B`` (Angstrom^3/eV) of ``atoms`` from energies at
    isotropic strains ``+-strain`` of its cell, with its calculator.

    With ``V = V0 (1 + e)^3``, ``d2E/de2 = 9 V0^2 d2E/dV2 = 9 V0 B`` at equilibrium, so
    ``1/B = 9 V0 / (d2E/de2)``.  (wfl 0.3.5 leaves out the 9, giving a barostat nine times
    slower than asked.)

    Raises
    ------
    ValueError
        The energy is not convex in the strain: the structure is far from equilibrium or
        unstable; give ``compressibility_au``.
    """
    energies = []
    for factor in (1.0, 1.0 + strain, 1.0 - strain):
        strained = atoms.copy()
        strained.calc = atoms.calc
        strained.set_cell(atoms.cell * factor, scale_atoms=True)
        energies.append(strained.get_potential_energy())
    curvature = (energies[1] + energies[2] - 2 * energies[0]) / strain ** 2
    if not curvature > 0:
        raise ValueError(f"cannot estimate the compressibility: the energy is not convex in the strain "
                         f"(+-{strain}); give compressibility_au")
    atoms.calc.reset()
    return 9 * atoms.get_volume() / curvature


def _thermalize(atoms, temperature, rng):
    """Maxwell-Boltzmann momenta at exactly ``temperature``, drawn from ``rng``, without net momentum."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:      # ASE < 3.29
        thermalize_momenta = None
    if thermalize_momenta is not None:
        thermalize_momenta(atoms, temperature, comm=SERIAL, exact_temperature=True, rng=rng)
    else:
        import inspect

        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        names = inspect.signature(MaxwellBoltzmannDistribution).parameters
        comm = {name: SERIAL for name in ("comm", "communicator") if name in names}
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, force_temp=True, rng=rng, **comm)
    Stationary(atoms, preserve_temperature=True)
