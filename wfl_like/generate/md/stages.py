"""A temperature schedule read the way wfl reads it, as segments of constant thermostat temperature."""

import numbers

import numpy as np

# Segments of a ramp when its number is not given (wfl's default).
DEFAULT_RAMP_SEGMENTS = 10
_STAGE_KEYS = {"T_i", "T_f", "traj_frac", "n_stages"}


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_temperature_value(value, what):
    if not _is_number(value) or not 0 <= value < float("inf"):
        raise ValueError(f"{what} must be a finite temperature >= 0 (Kelvin), not {value!r}")
    return float(value)


def is_constant(temperature):
    """Whether ``temperature`` is a single number (allowed without a thermostat, as the initial temperature)."""
    return _is_number(temperature)


def stage_dicts(temperature):
    """``temperature`` as wfl's list of stage dicts, checked.

    Parameters
    ----------
    temperature : float, (T_init, T_final[, n_stages]) or list of dict
        A constant; a ramp from ``T_init`` to ``T_final`` in ``n_stages`` (default 10)
        equal segments over the whole run; or stages ``{"T_i", "T_f", "traj_frac"[,
        "n_stages"]}``, each a ramp (or a constant when ``T_i == T_f``) lasting the
        fraction ``traj_frac`` of the steps.

    Returns
    -------
    list of dict
        Each with ``T_i``, ``T_f``, ``traj_frac`` and ``n_stages``.

    Raises
    ------
    ValueError
        ``temperature`` is none of these forms.
    """
    if _is_number(temperature):
        value = _check_temperature_value(temperature, "temperature")
        return [{"T_i": value, "T_f": value, "traj_frac": 1.0, "n_stages": DEFAULT_RAMP_SEGMENTS}]
    if isinstance(temperature, (tuple, list)) and temperature and all(isinstance(s, dict) for s in temperature):
        return [_checked_stage(stage, i) for i, stage in enumerate(temperature)]
    if isinstance(temperature, (tuple, list)) and len(temperature) in (2, 3):
        ramp = {"T_i": temperature[0], "T_f": temperature[1], "traj_frac": 1.0}
        if len(temperature) == 3:
            ramp["n_stages"] = temperature[2]
        return [_checked_stage(ramp, 0)]
    raise ValueError(f"cannot read temperature {temperature!r}: give a number (K), a ramp (T_init, T_final) "
                     f"or (T_init, T_final, n_stages), or a list of dicts with keys T_i, T_f, traj_frac "
                     f"and optionally n_stages")


def _checked_stage(stage, index):
    where = f"temperature stage {index} ({stage!r})"
    unknown = set(stage) - _STAGE_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; the keys are {sorted(_STAGE_KEYS)}")
    missing = {"T_i", "T_f", "traj_frac"} - set(stage)
    if missing:
        raise ValueError(f"{where} lacks {sorted(missing)}")
    fraction = stage["traj_frac"]
    if not _is_number(fraction) or not fraction > 0:
        raise ValueError(f"{where}: traj_frac must be a fraction of the steps > 0, not {fraction!r}")
    segments = stage.get("n_stages", DEFAULT_RAMP_SEGMENTS)
    if isinstance(segments, bool) or not isinstance(segments, numbers.Integral) or segments < 1:
        raise ValueError(f"{where}: n_stages must be a whole number >= 1, not {segments!r}")
    return {"T_i": _check_temperature_value(stage["T_i"], f"{where}: T_i"),
            "T_f": _check_temperature_value(stage["T_f"], f"{where}: T_f"),
            "traj_frac": float(fraction), "n_stages": int(segments)}


def initial_temperature(temperature):
    """The temperature the velocities are drawn at: that of the first stage's start."""
    return stage_dicts(temperature)[0]["T_i"]


def segments(temperature, steps):
    """The thermostat's schedule: a list of ``(temperature_K, n_steps)``, in order.

    A constant stage is one segment of ``round(traj_frac * steps)`` steps; a ramp is
    ``n_stages`` segments at evenly spaced temperatures from ``T_i`` to ``T_f``, each
    ``round(traj_frac * steps / n_stages)`` steps (so the total may differ from
    ``steps`` by rounding, as in wfl).
    """
    schedule = []
    for stage in stage_dicts(temperature):
        stage_steps = stage["traj_frac"] * steps
        if stage["T_i"] == stage["T_f"]:
            schedule.append((stage["T_i"], int(np.round(stage_steps))))
        else:
            n_each = int(np.round(stage_steps / stage["n_stages"]))
            schedule.extend((float(T), n_each) for T in np.linspace(stage["T_i"], stage["T_f"], stage["n_stages"]))
    return schedule
