"""Recording an MD trajectory's frames: :class:`FrameRecorder`, attached to the dynamics."""

import re

from wfl_like.utils.save_calc_results import save_calc_results

# Info keys that say where a frame is in its trajectory.
STEP_KEY, TIME_KEY, CURRENT_T_KEY, TARGET_T_KEY = "MD_step", "MD_time_fs", "MD_current_temperature", "MD_temperature_K"
ABORTED_KEY, FAILED_KEY = "MD_aborted_by", "MD_failed"


class AbortTrajectory(Exception):
    """Raised by the recorder inside the dynamics' loop when an abort check says stop."""


def frame_copy(atoms, prefix):
    """A copy of ``atoms`` with its calculator's results stored under ``prefix``.

    As wfl does, a prefix of the form ``"<common>__<rest>"`` first removes every key
    starting with ``"<common>__"`` (e.g. an earlier ``last_op__optimize_energy``): only
    the last operation's results are kept under the common prefix.
    """
    frame = atoms.copy()
    frame.calc = atoms.calc
    if prefix is not None and "__" in prefix:
        common = re.sub(r"__.*", "__", prefix)
        for store in (frame.info, frame.arrays):
            for key in [key for key in store if key.startswith(common)]:
                del store[key]
    save_calc_results(frame, prefix=prefix)
    return frame


class FrameRecorder:
    """Called by the dynamics after every step: labels the structure, keeps the selected frames
    every ``interval`` steps, and runs the abort check on them.

    Parameters
    ----------
    dynamics : ase.md.md.MolecularDynamics
        Its ``nsteps`` is the step number (counted over all temperature stages).
    atoms : ase.Atoms
        The live structure.
    dt : float
        Time step in fs.
    interval : int
        Record every this many steps.
    prefix : str or None
        ``results_prefix``.
    select : callable
        ``select(atoms) -> bool``: whether a recorded step is kept.
    abort_check : AbortBase or None
        This trajectory's own copy.
    """

    def __init__(self, dynamics, atoms, dt, interval, prefix, select, abort_check):
        self.dynamics, self.atoms, self.dt, self.interval = dynamics, atoms, dt, interval
        self.prefix, self.select, self.abort_check = prefix, select, abort_check
        self.frames = []
        self.last_labelled = None

    def __call__(self):
        step = self.dynamics.nsteps
        # a later segment's run starting at step 0 (after segments of 0 steps) repeats step 0
        if step % self.interval != 0 or step == self.last_labelled:
            return
        self.take(step)
        if self.abort_check is not None and self.abort_check.stop(self.atoms):
            raise AbortTrajectory(type(self.abort_check).__name__)

    def take(self, step):
        """Label the live structure as at ``step`` and keep a copy if it is selected."""
        self.atoms.info[STEP_KEY] = step
        self.atoms.info[TIME_KEY] = step * self.dt
        self.atoms.info[CURRENT_T_KEY] = self.atoms.get_temperature()
        self.last_labelled = step
        if self.select(self.atoms):
            self.frames.append(frame_copy(self.atoms, self.prefix))

    def take_last(self):
        """Keep the final state too, when the last step was not a recorded one."""
        if self.dynamics.nsteps != self.last_labelled:
            self.take(self.dynamics.nsteps)
