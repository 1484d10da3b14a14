"""A calculator wrapper that refuses non-finite results: :class:`FiniteResults`.

ASE's Armijo line search (used by ``PreconLBFGS``) loops forever once an energy or a force
is NaN: the step length it computes becomes NaN, and no comparison with NaN ever ends the
loop.  A potential that returns NaN for one structure (an ML model far outside its data,
say) would hang its worker; through this wrapper the structure fails with a message instead.
"""

import numpy as np


# What an optimizer reads; other properties (charges, magnetic moments...) are passed as they are.
CHECKED = ("energy", "free_energy", "forces", "stress")


class NonFiniteResultError(FloatingPointError):
    """A calculator returned NaN or infinite values.

    Not a ValueError or RuntimeError: PreconLBFGS takes those from its line search as a
    reason to reset its Hessian and retry, and would report a failed line search instead.
    """


class FiniteResults:
    """Stands for ``calc`` (every attribute is its), but raises :class:`NonFiniteResultError`
    when the energy, forces or stress it returns through ``Atoms`` are not all finite.

    Parameters
    ----------
    calc : ase Calculator
        The calculator that computes.
    """

    def __init__(self, calc):
        self._calc = calc

    def __getattr__(self, name):
        return getattr(self._calc, name)

    def _checked(self, name, value):
        if not np.all(np.isfinite(value)):
            raise NonFiniteResultError(f"calculator {type(self._calc).__name__} returned a non-finite {name} "
                                       f"(NaN or infinite values); the structure cannot be relaxed with it")
        return value

    def get_potential_energy(self, atoms=None, force_consistent=False):
        return self._checked("energy", self._calc.get_potential_energy(atoms, force_consistent=force_consistent))

    def get_forces(self, atoms=None):
        return self._checked("forces", self._calc.get_forces(atoms))

    def get_stress(self, atoms=None):
        return self._checked("stress", self._calc.get_stress(atoms))

    def get_property(self, name, atoms=None, allow_calculation=True):
        value = self._calc.get_property(name, atoms, allow_calculation)
        return self._checked(name, value) if name in CHECKED and value is not None else value
