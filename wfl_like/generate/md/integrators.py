"""ASE's dynamics for one MD run, built from its settings: :func:`make_dynamics`."""

import inspect

from ase.parallel import DummyMPI
from ase.units import fs

# Each trajectory belongs to one process: ASE's default communicator would, under MPI,
# broadcast rank 0's random numbers to ranks that run other structures (or wait for them).
SERIAL = DummyMPI()


def describe(settings):
    """The ASE class a run with these settings uses, by name."""
    integrator, thermostat = settings["integrator"], settings["temperature_tau"] is not None
    npt = settings["pressure"] is not None
    if integrator == "LangevinBAOAB":
        return "LangevinBAOAB"
    if not thermostat:
        return "VelocityVerlet"
    if integrator == "Langevin":
        return "Langevin"
    return "NPTBerendsen" if npt else "NVTBerendsen"


def make_dynamics(atoms, dt, settings, temperature_K, pressure_au, compressibility_au, rng):
    """The dynamics object that integrates ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
        With its calculator and initial momenta.
    dt : float
        Time step in fs.
    settings : dict
        Checked settings (see :mod:`.settings`).
    temperature_K : float or None
        The thermostat's first temperature (None without a thermostat).
    pressure_au : float or None
        External pressure in eV/Angstrom^3 (None at constant volume).
    compressibility_au : float or None
        For Berendsen's volume rescaling, in Angstrom^3/eV.
    rng : numpy.random.Generator or None
        The structure's own generator, for the Langevin noise.
    """
    name = describe(settings)
    tau = settings["temperature_tau"]
    kwargs = {}
    if tau is not None:
        kwargs["temperature_K"] = temperature_K
    if pressure_au is not None:
        pressure_tau = settings["pressure_tau"] if settings["pressure_tau"] is not None else 3 * tau
    if name == "LangevinBAOAB":
        from ase.md.langevinbaoab import LangevinBAOAB as cls
        if tau is not None:
            kwargs.update(T_tau=tau * fs, rng=rng)
        if pressure_au is not None:
            kwargs.update(externalstress=pressure_au, P_tau=pressure_tau * fs,
                          P_mass_factor=settings["pressure_mass_factor"], hydrostatic=settings["hydrostatic"])
    elif name == "VelocityVerlet":
        from ase.md.verlet import VelocityVerlet as cls
    elif name == "Langevin":
        from ase.md.langevin import Langevin as cls
        kwargs.update(friction=1 / (tau * fs), rng=rng)
    elif name == "NVTBerendsen":
        from ase.md.nvtberendsen import NVTBerendsen as cls
        kwargs.update(taut=tau * fs)
    else:
        from ase.md.nptberendsen import NPTBerendsen as cls
        kwargs.update(taut=tau * fs, pressure_au=pressure_au, taup=pressure_tau * fs,
                      compressibility_au=compressibility_au)
    if _takes_comm(cls):
        kwargs["comm"] = SERIAL
    return cls(atoms, dt * fs, **kwargs)


def _takes_comm(cls):
    parameters = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == "comm" or p.kind == p.VAR_KEYWORD for p in parameters)
