"""May an output's files be written, or are they to be reused as they are?  One answer.

What decides it: whether the files exist (they reach their final paths only when
complete, so existence means a run finished), ``overwrite``, and what a journal says about
them (:class:`JournalRecord`).  :meth:`wfl_like.configset.OutputSpec.plan_run` asks
:func:`plan_run` here; the engine acts on the :class:`Plan` it gets, and never decides by
itself.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class JournalRecord:
    """What the journal of a run says about the output files it is asked about.

    Attributes
    ----------
    records_a_run : bool
        The journal records a run (one that records none vouches for nothing).
    wrote_them : bool
        The files at the output paths are the ones a run of this journal wrote, so they
        are the run's to rewrite.
    unchanged : bool
        That run was this very call, on these very inputs and random stream, completed
        with no failure, and left the files as they are now and as they would be written.
    """

    records_a_run: bool
    wrote_them: bool
    unchanged: bool


# Why existing files are returned as they are.
EXIST = "exist"              # no journal is kept: complete files are taken as done
FOREIGN = "foreign"          # a journal is kept, but none describes the files: another tool wrote them
UNCHANGED = "unchanged"      # the journal says nothing changed since they were written


@dataclass(frozen=True)
class Plan:
    """What a run does with its outputs.

    Attributes
    ----------
    reuse : str or None
        Return the existing files as they are, for this reason (:data:`EXIST`,
        :data:`FOREIGN`, :data:`UNCHANGED`); None: compute and write them.
    replace_existing : bool
        When writing: existing files may be replaced although ``overwrite`` is False (the
        journal says this run's call wrote them).
    """

    reuse: str = None
    replace_existing: bool = False

    def message(self, name, paths):
        """What a run of operation ``name`` says when it reuses the files at ``paths``."""
        paths = [str(p) for p in paths]
        if self.reuse == EXIST:
            return f"{name}: reusing existing output {paths} (all files exist and overwrite is False)"
        if self.reuse == FOREIGN:
            return (f"{name}: output {paths} exists without a journal (written by another tool or an older "
                    f"version), so it could not be checked against the inputs and arguments; reusing it as "
                    f"it is (pass overwrite=True to recompute)")
        if self.reuse == UNCHANGED:
            return f"{name}: nothing changed since {paths} was written; reusing it"
        raise ValueError("a plan that writes its outputs reuses nothing")


WRITE = Plan()


def plan_run(in_files, overwrite, all_written, record):
    """Decide what a run does with its outputs.

    Parameters
    ----------
    in_files : bool
        The outputs go to files (else they are kept in memory: always written).
    overwrite : bool
        ``OutputSpec(overwrite=...)``.
    all_written : bool
        Every output file exists.
    record : JournalRecord or None
        What the run's journal says; None when the run keeps no journal.

    Returns
    -------
    Plan
    """
    if not in_files:
        return WRITE
    replace_existing = record is not None and record.wrote_them
    if overwrite or not all_written:
        return Plan(replace_existing=replace_existing)
    if record is None:
        return Plan(reuse=EXIST)
    if not record.records_a_run:
        return Plan(reuse=FOREIGN)
    if record.unchanged:
        return Plan(reuse=UNCHANGED)
    return Plan(replace_existing=replace_existing)     # stale or incomplete: the journal says what to recompute
