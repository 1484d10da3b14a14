"""Ready-made conditions that stop an MD trajectory: :class:`AbortOnCollision`, :class:`AbortOnLowEnergy`."""

import numbers

from ase.neighborlist import neighbor_list

from wfl_like.generate.md.abort_base import AbortBase


class AbortOnCollision(AbortBase):
    """Stop a trajectory when two atoms come closer than ``collision_radius`` in
    ``n_failed_steps`` recorded frames in a row.

    Parameters
    ----------
    collision_radius : float
        Distance (Angstrom) below which two atoms collide.
    n_failed_steps : int, default 3
        How many recorded frames in a row must have a collision.
    """

    def __init__(self, collision_radius, n_failed_steps=3):
        super().__init__(n_failed_steps)
        if (not isinstance(collision_radius, numbers.Real) or isinstance(collision_radius, bool)
                or not 0 < collision_radius < float("inf")):
            raise ValueError(f"collision_radius must be a distance > 0 (Angstrom), not {collision_radius!r}")
        self.collision_radius = float(collision_radius)

    def atoms_ok(self, atoms):
        """True when no pair of atoms is closer than ``collision_radius``."""
        # neighbor_list's cutoff is a radius around each atom: pairs closer than it are listed
        first = neighbor_list("i", atoms, self.collision_radius)
        return len(first) == 0


class AbortOnLowEnergy(AbortBase):
    """Stop a trajectory when its potential energy per atom falls more than
    ``delta_E_per_atom`` below that of its first recorded frame (a sign that the
    potential has found an unphysical hole).

    Parameters
    ----------
    delta_E_per_atom : float
        The drop (eV/atom) that stops the trajectory; its sign is ignored.
    """

    def __init__(self, delta_E_per_atom):
        super().__init__(1)
        # NaN would never compare true: the check would silently never stop anything
        if (not isinstance(delta_E_per_atom, numbers.Real) or isinstance(delta_E_per_atom, bool)
                or delta_E_per_atom != delta_E_per_atom):
            raise ValueError(f"delta_E_per_atom must be an energy per atom (eV), not {delta_E_per_atom!r}")
        self.delta_E_per_atom = abs(float(delta_E_per_atom))
        self.initial_E_per_atom = None

    def atoms_ok(self, atoms):
        """True unless the energy per atom is more than ``delta_E_per_atom`` below the first frame's."""
        energy_per_atom = atoms.get_potential_energy() / len(atoms)
        if self.initial_E_per_atom is None:
            self.initial_E_per_atom = energy_per_atom
        return energy_per_atom - self.initial_E_per_atom >= -self.delta_E_per_atom
