"""The base class of the conditions that stop an MD trajectory early: :class:`AbortBase`."""

from abc import ABC, abstractmethod


class AbortBase(ABC):
    """A condition checked on the frames of an MD trajectory, which ends it when met.

    :func:`wfl_like.generate.md.md` calls :meth:`stop` on every frame it records (every
    ``traj_step_interval`` steps), with the live structure (its calculator attached, its
    ``info`` holding ``MD_step``, ``MD_time_fs``, ...).  The default :meth:`stop` ends the
    trajectory once the last ``n_failed_steps`` checks all found the structure not ok.

    The object given to ``md`` is a template: each trajectory gets its own copy, so that
    what a check remembers (its history, a reference energy) belongs to one trajectory
    and the outcome does not depend on how items are spread over workers or chunks.

    Parameters
    ----------
    n_failed_steps : int, default 1
        How many checks in a row must fail before the trajectory is stopped.

    Raises
    ------
    ValueError
        ``n_failed_steps`` is not a whole number >= 1.
    """

    def __init__(self, n_failed_steps=1):
        if isinstance(n_failed_steps, bool) or not isinstance(n_failed_steps, int) or n_failed_steps < 1:
            raise ValueError(f"n_failed_steps must be a whole number >= 1, not {n_failed_steps!r}")
        self.n_failed_steps = n_failed_steps
        self.ok_history = []

    @abstractmethod
    def atoms_ok(self, atoms):
        """Whether this frame is acceptable.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure at this step, with its calculator.

        Returns
        -------
        bool
        """

    def stop(self, atoms):
        """Record the check of this frame; whether the trajectory must stop here.

        Parameters
        ----------
        atoms : ase.Atoms
            The structure at this step, with its calculator.

        Returns
        -------
        bool
            True once the last ``n_failed_steps`` checks all failed.
        """
        self.ok_history.append(bool(self.atoms_ok(atoms)))
        window = self.ok_history[-self.n_failed_steps:]
        return len(window) == self.n_failed_steps and not any(window)


# wfl's name for the same class, so that wfl scripts subclassing it run unchanged
AbortSimBase = AbortBase
