"""The settings of one MD run, checked, and their per-structure overrides (``WFL_MD_KWARGS``)."""

import json
import numbers

from wfl_like.generate.md import stages
from wfl_like.generate.utils import check_config_type_action
from wfl_like.utils.pressure import check_pressure

INTEGRATORS = ("Berendsen", "Langevin", "LangevinBAOAB")
OVERRIDES_KEY = "WFL_MD_KWARGS"

# The settings a structure may override in info["WFL_MD_KWARGS"], with md()'s defaults.
# steps, dt, the calculator and the logger are the same for every structure, as in wfl.
DEFAULTS = {
    "integrator": "Berendsen",
    "temperature": None,
    "temperature_tau": None,
    "pressure": None,
    "hydrostatic": True,
    "pressure_tau": None,
    "pressure_mass_factor": 1,
    "compressibility_au": None,
    "compressibility_fd_displ": 0.01,
    "traj_step_interval": 1,
    "skip_failures": True,
    "results_prefix": "last_op__md_",
    "verbose": False,
    "update_config_type": "append",
}


def _positive(value):
    # finite too: an infinite time step or time constant only gives NaN positions later
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < float("inf")


def check(settings, steps, dt):
    """Refuse settings that cannot make a run, each with what to do instead.

    Parameters
    ----------
    settings : dict
        The keys of :data:`DEFAULTS`.
    steps, dt
        The number of steps and the time step (fs).

    Raises
    ------
    ValueError
        A value out of range or a combination no integrator runs (the same that wfl refuses).
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, not {steps!r}")
    if not _positive(dt):
        raise ValueError(f"dt must be a time step > 0 (fs), not {dt!r}")
    s = settings
    if s["integrator"] not in INTEGRATORS:
        raise ValueError(f"unknown integrator {s['integrator']!r}; use one of {list(INTEGRATORS)} (VelocityVerlet, "
                         f"i.e. NVE, is used when temperature_tau is None)")
    if s["integrator"] == "LangevinBAOAB":
        _langevin_baoab_class()
    _check_temperature(s)
    if scheduled_steps(s, steps) == 0 < steps:
        raise ValueError(f"temperature {s['temperature']!r} over steps={steps} rounds every stage to 0 steps: no MD "
                         f"step would run; give more steps, or fewer stages (n_stages) or larger traj_frac")
    _check_pressure(s)
    interval = s["traj_step_interval"]
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
        raise ValueError(f"traj_step_interval must be a whole number >= 1, not {interval!r}")
    if not isinstance(s["skip_failures"], bool):
        raise TypeError(f"skip_failures must be True or False, not {s['skip_failures']!r}")
    if s["results_prefix"] == "":
        raise ValueError("results_prefix must not be empty (plain 'energy'/'forces' keys would be read back as a "
                         "calculator's results); give a prefix, or None to keep a SinglePointCalculator")
    if s["results_prefix"] is not None and not isinstance(s["results_prefix"], str):
        raise TypeError(f"results_prefix must be a string or None, not {s['results_prefix']!r}")
    check_config_type_action(s["update_config_type"])


def _check_temperature(s):
    temperature, tau = s["temperature"], s["temperature_tau"]
    if tau is not None and not _positive(tau):
        raise ValueError(f"temperature_tau must be a time > 0 (fs) or None, not {tau!r}")
    if temperature is not None:
        stages.stage_dicts(temperature)
    if tau is not None and temperature is None:
        raise ValueError(f"temperature_tau={tau!r} turns the {s['integrator']} thermostat on, but no temperature "
                         f"was given: give temperature=..., or temperature_tau=None for NVE")
    if tau is None and temperature is not None and not stages.is_constant(temperature):
        raise ValueError(f"without a thermostat (temperature_tau=None, NVE) temperature must be one number, the "
                         f"initial temperature, not the schedule {temperature!r}; give temperature_tau to follow it")


def _check_pressure(s):
    if s["pressure"] is None:
        return
    # its form now, not in each structure's run, where every structure would fail the same way
    check_pressure(s["pressure"])
    integrator, tau = s["integrator"], s["temperature_tau"]
    if integrator == "Langevin":
        raise ValueError("integrator 'Langevin' runs at constant volume only; for a pressure use 'LangevinBAOAB' "
                         "or 'Berendsen'")
    if integrator == "Berendsen" and tau is None:
        raise ValueError("integrator 'Berendsen' with a pressure needs a thermostat too (temperature and "
                         "temperature_tau): it has no constant-pressure NVE (NPH) mode; use 'LangevinBAOAB' for NPH")
    if integrator == "Berendsen" and not s["hydrostatic"]:
        raise ValueError("integrator 'Berendsen' rescales the volume only (hydrostatic=True); for a cell free to "
                         "change shape (hydrostatic=False) use 'LangevinBAOAB'")
    if integrator == "LangevinBAOAB" and s["pressure_tau"] is None and tau is None:
        raise ValueError("integrator 'LangevinBAOAB' with a pressure needs pressure_tau (or temperature_tau, "
                         "whose triple is the default)")
    for name in ("pressure_tau", "compressibility_au"):
        if s[name] is not None and not _positive(s[name]):
            raise ValueError(f"{name} must be > 0 or None, not {s[name]!r}")
    for name in ("pressure_mass_factor", "compressibility_fd_displ"):
        if not _positive(s[name]):
            raise ValueError(f"{name} must be > 0, not {s[name]!r}")
    if not isinstance(s["hydrostatic"], bool):
        raise TypeError(f"hydrostatic must be True or False, not {s['hydrostatic']!r}")


def scheduled_steps(settings, steps):
    """How many steps the thermostat's schedule runs: ``steps``, or what the rounding of
    its stages (as wfl rounds them) makes of it."""
    if settings["temperature"] is None or settings["temperature_tau"] is None:
        return steps
    return sum(n_steps for _, n_steps in stages.segments(settings["temperature"], steps))


def unused(settings):
    """The names of settings given a value that this run cannot use (for a warning)."""
    s, names = settings, []
    if s["temperature_tau"] is None and s["integrator"] != DEFAULTS["integrator"] and not (
            s["integrator"] == "LangevinBAOAB" and s["pressure"] is not None):
        names.append("integrator")      # no thermostat: the run is NVE whatever it names
    npt = s["pressure"] is not None
    if not npt:
        names += [name for name in ("pressure_tau", "compressibility_au") if s[name] is not None]
        names += [name for name in ("hydrostatic", "pressure_mass_factor", "compressibility_fd_displ")
                  if s[name] != DEFAULTS[name]]
    elif s["integrator"] == "Berendsen":
        names += ["pressure_mass_factor"] if s["pressure_mass_factor"] != DEFAULTS["pressure_mass_factor"] else []
    elif s["integrator"] == "LangevinBAOAB":
        names += ["compressibility_au"] if s["compressibility_au"] is not None else []
        names += (["compressibility_fd_displ"] if s["compressibility_fd_displ"] != DEFAULTS["compressibility_fd_displ"]
                  else [])
    return names


def needs_rng(settings):
    """Whether a run with these settings draws random numbers (velocities, Langevin noise, a pressure)."""
    pressure = settings["pressure"]
    return settings["temperature"] is not None or (pressure is not None and check_pressure(pressure))


def with_overrides(settings, atoms, item_i):
    """``settings`` updated by the structure's ``info["WFL_MD_KWARGS"]`` (a dict, or a JSON text of one).

    Raises
    ------
    ValueError
        The overrides cannot be read, or name a setting that cannot be overridden.
    """
    overrides = atoms.info.get(OVERRIDES_KEY)
    if overrides is None:
        return settings
    where = f"structure {item_i}: info[{OVERRIDES_KEY!r}]"
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON ({exc}): {overrides!r}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a dict of md keyword arguments (or its JSON text), not {overrides!r}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where} names {unknown}, which cannot be set per structure; the settings that can are "
                         f"{sorted(DEFAULTS)}")
    return {**settings, **overrides}


def _langevin_baoab_class():
    """ASE's LangevinBAOAB, which ASE has had since 3.27."""
    try:
        from ase.md.langevinbaoab import LangevinBAOAB
    except ImportError:
        raise ValueError("integrator 'LangevinBAOAB' needs ASE >= 3.27 (ase.md.langevinbaoab); upgrade ASE or "
                         "use 'Berendsen' or 'Langevin'") from None
    return LangevinBAOAB
