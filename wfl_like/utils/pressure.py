"""The pressure of one structure's run, fixed or drawn at random: :func:`sample_pressure`."""

import numbers

import numpy as np

# Largest number of draws for "normal_positive" before giving up: with a mean many
# sigmas below zero no positive value will come.
_MAX_DRAWS = 1000


def sample_pressure(pressure, at=None, rng=None):
    """The pressure (in GPa, as wfl's operations take it) for one structure.

    Parameters
    ----------
    pressure : float or tuple
        - a number: that pressure;
        - ``("info", key)``: the value of ``at.info[key]``, itself any of these forms;
        - ``("exponential", scale)``: ``scale`` times an exponential draw of rate 1;
        - ``("normal_positive", mean, sigma)``: a normal draw, redrawn while negative;
        - ``("uniform", lower, upper)``: a uniform draw between the bounds.
    at : ase.Atoms, optional
        The structure, needed by the ``"info"`` form.
    rng : numpy.random.Generator, optional
        The structure's own generator, needed by the random forms, so that its pressure
        is the same whatever the process count or chunk size.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``pressure`` is none of these forms, or a random form is given without ``rng``.
    """
    return _sample(pressure, at, rng, seen=())


def _is_finite_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _sample(pressure, at, rng, seen):
    if isinstance(pressure, numbers.Real) and not isinstance(pressure, bool):
        if not np.isfinite(pressure):
            # a NaN or infinite pressure only fails later, inside the optimizer or integrator
            raise ValueError(f"pressure must be a finite number (GPa), not {pressure!r}")
        return float(pressure)
    if not isinstance(pressure, (tuple, list)) or not pressure or not isinstance(pressure[0], str):
        raise ValueError(f"cannot read pressure {pressure!r}: give a number or a tuple such as "
                         f"('uniform', 0.0, 1.0); see sample_pressure's documentation")
    mode, *values = pressure
    expected = {"info": 1, "exponential": 1, "normal_positive": 2, "uniform": 2}
    if mode not in expected:
        raise ValueError(f"unknown pressure mode {mode!r} in {pressure!r}; use one of {sorted(expected)}")
    if len(values) != expected[mode]:
        raise ValueError(f"pressure {pressure!r}: mode {mode!r} takes {expected[mode]} value(s)")
    if mode == "info":
        return _from_info(values[0], pressure, at, rng, seen)
    if rng is None:
        raise ValueError(f"pressure {pressure!r} is random: pass rng= (a numpy Generator) to the operation")
    if not all(_is_finite_number(v) for v in values):
        raise ValueError(f"pressure {pressure!r}: the values of mode {mode!r} must be finite numbers")
    if mode == "normal_positive" and values[1] < 0:
        raise ValueError(f"pressure {pressure!r}: the standard deviation must be >= 0")
    if mode == "uniform" and values[0] > values[1]:
        raise ValueError(f"pressure {pressure!r}: the lower bound must not exceed the upper one")
    if mode == "exponential":
        return float(values[0] * rng.exponential(1.0))
    if mode == "uniform":
        return float(rng.uniform(values[0], values[1]))
    return _normal_positive(*values, rng=rng, pressure=pressure)


def _from_info(key, pressure, at, rng, seen):
    if at is None or key not in at.info:
        raise ValueError(f"pressure {pressure!r} names info key {key!r}, which the structure does not have")
    if key in seen:
        raise ValueError(f"pressure {pressure!r}: info key {key!r} refers back to itself")
    return _sample(at.info[key], at, rng, seen + (key,))


def _normal_positive(mean, sigma, rng, pressure):
    for _ in range(_MAX_DRAWS):
        value = rng.normal(mean, sigma)
        if value >= 0:
            return float(value)
    raise ValueError(f"pressure {pressure!r}: no positive value in {_MAX_DRAWS} draws; raise the mean")


def check_pressure(pressure):
    """Refuse, before any work, a ``pressure`` that :func:`sample_pressure` cannot read.

    ``("info", key)`` forms are checked only for their shape: the value they name is read
    from each structure when it is sampled.

    Returns
    -------
    bool
        Whether a random form is given, which needs the operation's ``rng=``.

    Raises
    ------
    ValueError
        ``pressure`` is none of the forms :func:`sample_pressure` takes.
    """
    if isinstance(pressure, (tuple, list)) and pressure and pressure[0] == "info":
        if len(pressure) != 2 or not isinstance(pressure[1], str):
            raise ValueError(f"pressure {pressure!r}: mode 'info' takes one info key (a string)")
        return False
    # a throwaway generator: only the form is checked here, nothing drawn is used
    _sample(pressure, None, np.random.default_rng(0), seen=())
    return not (isinstance(pressure, numbers.Real) and not isinstance(pressure, bool))
