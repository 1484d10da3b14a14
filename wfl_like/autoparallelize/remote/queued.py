"""The driver's side of queued jobs: chunks become tasks, tasks go out as job arrays, records come back.

:class:`QueuedJobs` stands where a worker pool stands for a local run: ``submit(chunk)``
gives a future of the chunk's outputs, in the form the engine stores (the
:class:`~wfl_like.io.renderer.RenderedOutput` of each item for file outputs, structures
otherwise, an :class:`~wfl_like.autoparallelize.frame_items.Unstorable` for a failed
item).  Its futures are settled by the thread that waits on them: each wait looks at the
queue and at the results files every ``check_interval`` seconds, so no thread of its
own runs behind the caller's back.

What it trusts, in order: the results file of a task (an item with a record is done,
whatever Slurm says), then Slurm's state of the task's last job (``squeue`` /
``scontrol``; a job Slurm no longer knows has ended).  A task whose job ended with items
unrecorded (cancelled, killed at its wall time, its node lost, its process killed) is
submitted again, up to ``retries`` times in one call; its recorded items are not computed
again.  Then those items fail, their reason naming the job and its end.
"""

import logging
import os
import time
import uuid
from concurrent.futures import Future
from pathlib import Path


from wfl_like.autoparallelize.frame_items import Unstorable
from wfl_like.autoparallelize.remote import slurm
from wfl_like.autoparallelize.remote.jobs import (TASK_PREFIX, code_key_of, job_script, make_task, task_call,
                                                   write_listing)
from wfl_like.autoparallelize.remote.registry import REGISTRY_NAME, JobRegistry
from wfl_like.autoparallelize.remote.results import read_results
from wfl_like.autoparallelize.remote.task import write_task
from wfl_like.autoparallelize.resume import codec, stored
from wfl_like.autoparallelize.resume.relocate import moved_output
from wfl_like.errors import QueuedJobsTimeout, SlurmError
from wfl_like.io.renderer import RenderedOutput

log = logging.getLogger("wfl_like.progress")

COMMENT_PREFIX = "wfl_like:"
STATE_SUFFIX = ".jobs"
# How long squeue / scontrol may keep failing before the call gives up (the jobs run on)
SLURM_OUTAGE_S = 600
# Slurm's default MaxArraySize is 1001 (indices 0..1000): larger submissions are split
MAX_ARRAY = 1000


def remote_info_of(info, op_name):
    """The RemoteInfo of a call (``autopara_info.remote_info``, else ``WFL_EXPYRE_INFO``), or None."""
    from wfl_like.autoparallelize.remote.remote_info import RemoteInfo

    return RemoteInfo.from_autopara(info.remote_info, op_name)


def state_dir_of(journal_path, fresh=False, call_key=None):
    """The state directory of the call whose journal is ``journal_path``: beside it.

    ``fresh`` (outputs with ``overwrite=True``): what an earlier run left there is set
    aside, so that nothing is taken from its tasks, unless those tasks are of this very
    call (``call_key``) and it has not collected them yet: a call that did not wait for its
    jobs (``wait_for_results=False``), or whose driver died, is collected by calling it again,
    with ``overwrite=True`` as without.
    """
    state_dir = Path(journal_path).with_suffix(STATE_SUFFIX)
    registry_path = state_dir / REGISTRY_NAME
    if fresh and registry_path.exists():
        registry = JobRegistry(state_dir)
        registry.close()
        if registry.call_key is not None and registry.call_key == call_key and not registry.collected:
            return state_dir
        # set aside, not removed: jobs of the replaced call may still run, each in a task
        # directory of its own that no new task ever takes
        registry_path.rename(state_dir / f"{REGISTRY_NAME}.replaced-{time.strftime('%Y%m%dT%H%M%S')}-"
                                         f"{uuid.uuid4().hex[:6]}")
    return state_dir


class JobsPending(Exception):
    """``wait_for_results=False`` and some queued jobs have not finished: the call returns None."""

    def __init__(self, op_name, jobs):
        summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(jobs.states_summary().items()))
        super().__init__(f"{op_name}: queued tasks {summary}; not waiting for them (wait_for_results=False): "
                         f"call again with the same arguments to collect")


class QueuedJobs:
    """The queued jobs of one call, kept in a state directory on the shared filesystem.

    Parameters
    ----------
    remote_info : RemoteInfo
    call : OpCall or FramesCall
        The call as the engine runs it locally.
    info : AutoparaInfo
        The options of the call, used inside each job.
    outputs : OutputSpec or None
        File outputs are rendered in the jobs.
    state_dir : Path
        Holds the registry (:mod:`.registry`), the task directories and the jobs' logs.
    per_job : int
        Items per new task (one queued job each).
    progress : wfl_like.progress.Progress, optional
        Shown the jobs' states as they change.
    """

    def __init__(self, remote_info, call, info, outputs, state_dir, per_job, progress=None, call_key=None):
        self.remote = remote_info
        self.name = call.name
        self.call = task_call(call)
        self.info = info
        self.to_files = outputs is not None and outputs.files is not None
        # outputs=None: the jobs record that each item succeeded, not what it gave
        self.keep_outputs = outputs is not None
        self.code_key = code_key_of(self.call, info.initializer)
        self.renderer = outputs.renderer() if self.to_files else None
        # absolute: the jobs run in the driver's directory, and their logs and tasks are named from there
        self.state_dir = Path(state_dir).resolve()
        self.registry = JobRegistry(self.state_dir)
        self._views = {}          # task number -> _TaskView, for the tasks this call uses
        self._to_submit = []      # task numbers waiting for the next sbatch
        self._pending = []        # futures not yet settled
        self._started = time.monotonic()
        self._last_report = None
        self.submitted_jobs = []  # job ids sbatch gave in this call
        self.per_job = per_job
        self.progress = progress
        self._gathered = None     # the new task being filled
        self._claimed = set()     # (task number, position) of every item this call takes
        self._moved = {}          # (task number, position) -> the output of a frame that moved, relocated
        self.call_key = call_key
        self._silent_since = None  # since when squeue / scontrol have been failing
        self._next_number = self.registry.next_number()
        self._confirm_unheard_submissions()

    # --- the engine's side ------------------------------------------------------------

    def submit(self, chunk):
        """A future of the outputs of ``chunk`` (a Chunk with cache keys).

        Each item is taken from the task that already holds it (its record, or its job
        still queued); the others are gathered into new tasks of ``per_job`` items (items of
        several chunks share one: the few items a rerun computes again go out together),
        submitted at the next :meth:`flush`.
        """
        parts = []
        for position, (key, location) in enumerate(zip(chunk.keys, chunk.locations)):
            held = self._holder(key, tuple(location or ()))
            parts.append(held if held is not None else self._gather(chunk, position))
        future = _ChunkFuture(self, parts)
        # only this future is looked at: a pass over all of them per chunk would cost n^2
        if not self._settled(future):
            self._pending.append(future)
        return future

    def flush(self):
        """Submit the tasks waiting for it, as job arrays (one ``sbatch`` per 1000 tasks)."""
        self._close_gathered()
        while self._to_submit:
            numbers, self._to_submit = self._to_submit[:MAX_ARRAY], self._to_submit[MAX_ARRAY:]
            self._submit_array(numbers)

    def all_settled(self):
        """Look once at the queue and the results; whether every future has its outputs."""
        self.poll()
        return not self._pending

    def wait_for(self, future, timeout=None):
        """Poll until ``future`` is settled; :class:`QueuedJobsTimeout` past ``remote_info.timeout``."""
        while not future.done():
            self.poll()
            if future.done():
                return
            if self.remote.timeout is not None and time.monotonic() - self._started > self.remote.timeout:
                raise QueuedJobsTimeout(self._timeout_message())
            time.sleep(self.remote.check_interval)

    def states_summary(self):
        """``{state: number of tasks}`` over the tasks this call waits for, in Slurm's words plus
        ``DONE`` (every item recorded) and ``TO_SUBMIT``."""
        summary = {}
        for view in self._views.values():
            if view.waited_for:
                summary[view.summary_state()] = summary.get(view.summary_state(), 0) + 1
        return summary

    def say_left_queued(self):
        """Warn (in the log) of the jobs this call leaves behind as it stops early: they run on."""
        jobs = sorted({view.job[0] for view in self._views.values()
                       if view.job is not None and view.missing() and not view.ended and view.lost is None})
        if jobs:
            log.warning("%s: stopped while jobs %s are queued or running; they go on: rerun the same call to "
                        "collect them, or scancel them", self.name, " ".join(jobs))

    def collected(self):
        """The call stored every output of its tasks: a later call with ``overwrite=True`` starts afresh."""
        self.registry.mark_collected()

    def close(self):
        """Let go of the registry; the jobs are left as they are (queued jobs outlive the driver)."""
        self.registry.close()

    # --- tasks -------------------------------------------------------------------------

    def _holder(self, key, location):
        """``(task number, position)`` of an existing task that gives this item, or None.

        A failure recorded before this call is not taken (a rerun computes failed items
        again, as a local rerun does): the item goes into a new task.  An item whose frame
        moved (a structure put before it) is taken where its record is there and can be
        moved to the new location exactly, as the journal does.
        """
        for entry, position in self.registry.holders_of(key):
            part = (entry.number, position)
            if part in self._claimed or not (self.state_dir / entry.name).is_dir():
                continue    # an identical item earlier in this call has it, or its directory was removed
            view = self._view(entry)
            record = view.records.get(entry.indices[position])
            if record is not None and not record.ok and entry.indices[position] in view.failed_before:
                continue
            if entry.locations[position] != location:
                moved = self._relocated(view, position, record, location)
                if moved is _CANNOT:
                    continue
                self._moved[part] = moved
            self._claimed.add(part)
            return part
        return None

    def _relocated(self, view, position, record, location):
        """The output of a record made at another location, as storing the item at ``location``
        gives it; ``_CANNOT`` where the record is not there yet, or cannot be moved exactly."""
        index = view.entry.indices[position]
        if record is None or not record.ok or _damage(record, index, view, self.to_files, self.keep_outputs):
            return _CANNOT
        output = self._kept(record)
        if not isinstance(output, RenderedOutput):
            return output       # nothing of the location is in it
        moved = moved_output(output, self.renderer, view.entry.locations[position], location)
        return _CANNOT if moved is None else moved

    def _view(self, entry):
        view = self._views.get(entry.number)
        if view is None:
            view = self._views[entry.number] = _TaskView(entry, self.state_dir / entry.name)
        return view

    def _gather(self, chunk, position):
        """Put item ``position`` of ``chunk`` into the task being gathered; its ``(number, position)``."""
        if self._gathered is None:
            self._gathered = _Gathered(self._next_number)
            self._next_number += 1
        gathered = self._gathered
        gathered.add(chunk, position)
        part = (gathered.number, len(gathered.indices) - 1)
        self._claimed.add(part)
        if len(gathered.indices) >= self.per_job:
            self._close_gathered()
        return part

    def _close_gathered(self):
        """Write the task being gathered and record it: it waits for the next sbatch."""
        gathered, self._gathered = self._gathered, None
        if gathered is None:
            return
        task = make_task(self.call, gathered.indices, gathered.items, gathered.rngs, gathered.locations,
                         self.renderer, self.info, keep_outputs=self.keep_outputs, code_key=self.code_key)
        name = f"{TASK_PREFIX}{gathered.number}_{uuid.uuid4().hex[:8]}"
        write_task(self.state_dir / name, task)
        # recorded once its directory is complete, and before any job can be submitted for it
        if self.call_key is not None:
            self.registry.begin_call(self.call_key)
        entry = self.registry.add_task(gathered.number, name, gathered.indices, gathered.keys, gathered.locations)
        self._view(entry).to_submit = True
        self._to_submit.append(gathered.number)

    def _submit_array(self, numbers):
        import fcntl

        token = uuid.uuid4().hex
        listing = write_listing(self.state_dir / f"array_{token}.tasks",
                                [self.state_dir / self.registry.tasks[n].name for n in numbers])
        directives = self.remote.sbatch_directives()
        # sbatch holds this lock for as long as it runs, even past a killed driver: a rerun
        # waits for it before it looks for the job by its comment
        lock = os.open(self.state_dir / f"submit_{token}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # journaled before sbatch: a driver killed before it hears the job id finds the job by its comment
            self.registry.submitting(token, numbers)
            job_id = slurm.submit_array(job_script(self.remote, listing), len(numbers), directives, self.state_dir,
                                        comment=COMMENT_PREFIX + token, chdir=os.getcwd(),
                                        log_dir=None if self._user_logs() else self.state_dir / "logs",
                                        keep_fd=lock)
        finally:
            os.close(lock)
        self.registry.submitted(token, job_id, numbers)
        self.submitted_jobs.append(job_id)
        log.info("%s: submitted job array %s of %d tasks (%s)", self.name, job_id, len(numbers), self.state_dir)
        for array_index, number in enumerate(numbers):
            self._views[number].submitted(job_id, array_index)

    def _user_logs(self):
        """Whether ``header_extra`` says where the jobs' logs go (then it is obeyed)."""
        return any(option in line for line in self.remote.header_extra
                   for option in ("--output", "--error", " -o ", " -e "))

    def _confirm_unheard_submissions(self):
        """Find the jobs of submissions whose job id a killed driver never recorded."""
        for token, numbers in list(self.registry.unconfirmed.items()):
            _wait_for_sbatch(self.state_dir / f"submit_{token}.lock")
            job_id = slurm.find_by_comment(COMMENT_PREFIX + token)
            if job_id is None:
                # never reached Slurm, or ended long ago: the results files tell what was done
                self.registry.forget(token)
            else:
                log.info("%s: found job %s, submitted by an earlier run that did not record it", self.name, job_id)
                self.registry.submitted(token, job_id, numbers)

    # --- watching ----------------------------------------------------------------------

    def poll(self):
        """Submit what waits, read the states and the results of the tasks waited for, settle futures."""
        self.flush()
        waited = {number for future in self._pending for number, _ in future.parts}
        for number in waited:
            self._views[number].waited_for = True
        states = self._states({n for n in waited if not self._views[n].to_submit})
        if states is None:
            return          # Slurm did not answer: nothing is judged ended on no news
        for number in waited:
            view = self._views[number]
            if view.to_submit:
                continue
            state = states.get(view.job) if view.job is not None else None
            view.look(state)
            if view.ended and view.missing():
                self._after_end(view)
        self.flush()
        self._settle_ready()
        self._report()

    def _states(self, numbers):
        """``{(job id, array index): state}`` of the last jobs of tasks ``numbers``, read before
        their results (so that a job seen ended has written all it ever will)."""
        states = {}
        try:
            for job_id in {self._views[n].job[0] for n in numbers if self._views[n].job is not None}:
                for array_index, state in slurm.task_states(job_id).items():
                    states[(job_id, array_index)] = state
        except SlurmError as exc:
            # a controller that is restarting or overloaded answers again soon: a long campaign
            # must not end on one missed answer, only on an outage
            now = time.monotonic()
            if self._silent_since is None:
                self._silent_since = now
            if now - self._silent_since > SLURM_OUTAGE_S:
                raise
            log.warning("%s: Slurm did not answer (%s); trying again in %g s", self.name, exc,
                        self.remote.check_interval)
            return None
        self._silent_since = None
        return states

    def _after_end(self, view):
        """A task whose job ended with items unrecorded: submit it again, or fail those items."""
        tries = 1 + self.remote.retries
        if view.tries_here < tries:
            if view.job is not None:
                log.info("%s: job %s ended %s with %d items of task %d unrecorded; submitting it again "
                         "(%d of %d tries)", self.name, view.job_name(), view.state or "(gone)",
                         len(view.missing()), view.entry.number, view.tries_here + 1, tries)
            view.to_submit = True
            self._to_submit.append(view.entry.number)
        else:
            log_path = self._log_of(view)
            ending = view.state or "and was forgotten by Slurm"
            view.lost = (f"its queued job ended without computing it ({_tries(view)}; the last, "
                         f"{view.job_name()}, ended {ending}; its log {log_path}{_last_line(log_path)})")

    def _log_of(self, view):
        job_id, array_index = view.job
        return self.state_dir / "logs" / f"{self.remote.job_name}_{job_id}_{array_index}.err"

    def _settle_ready(self):
        self._pending = [future for future in self._pending if not self._settled(future)]

    def _settled(self, future):
        """Give ``future`` its outputs if every one is known; whether it was."""
        outputs = [self._output(number, position) for number, position in future.parts]
        if any(output is _NOT_YET for output in outputs):
            return False
        # handed over: the records' texts are not kept twice, nor after they are stored
        for number, position in future.parts:
            self._views[number].deliver(position)
            self._moved.pop((number, position), None)
        future.set_result(outputs)
        return True

    def _output(self, number, position):
        if (number, position) in self._moved:
            return self._moved[(number, position)]
        view = self._views.get(number)
        if view is None:
            return _NOT_YET       # a task still being gathered
        index = view.entry.indices[position]
        record = view.records.get(index)
        if record is None:
            return _NOT_YET if view.lost is None else Unstorable(view.lost)
        if not record.ok:
            return Unstorable(f"{record.reason} (in queued job {view.job_name()}; its log {self._log_of(view)})")
        # a record is read back from a shared filesystem: what it claims is checked before it is stored
        damage = _damage(record, index, view, self.to_files, self.keep_outputs)
        if damage is not None:
            return Unstorable(f"the record of item {index} in {view.task_dir / 'results'} {damage}; remove that "
                              f"directory and rerun to compute the item again")
        return self._kept(record)

    def _kept(self, record):
        """What storing an ok record (checked) stores."""
        if not self.keep_outputs:
            return None
        if record.data is not None:
            return codec.decode(record.data)
        if record.count == 0:
            return None
        return RenderedOutput(record.file_i, record.text, record.count)      # file outputs (checked)

    def _report(self):
        summary = self.states_summary()
        if summary and summary != self._last_report:
            self._last_report = summary
            if self.progress is not None:
                self.progress.jobs(summary)
            log.info("%s: queued tasks: %s", self.name, ", ".join(f"{n} {state.lower()}"
                                                                  for state, n in sorted(summary.items())))

    def _timeout_message(self):
        waiting = sorted({f"{v.job_name()} ({v.state or 'not seen'})" for v in self._views.values()
                          if v.waited_for and v.missing() and v.job is not None})
        return (f"{self.name}: after {self.remote.timeout:g} s (remote_info timeout), {len(self._pending)} chunks "
                f"still wait for queued jobs: {', '.join(waiting[:10])}{' ...' if len(waiting) > 10 else ''}; "
                f"they stay queued: rerun the same call to collect them, or scancel them to give up")


_NOT_YET = object()
_CANNOT = object()


def _wait_for_sbatch(lock_path):
    """Wait until no sbatch of a killed driver holds ``lock_path`` (at most as long as a Slurm
    command may take)."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        deadline = time.monotonic() + slurm.COMMAND_TIMEOUT + 10
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
    finally:
        os.close(fd)


def _damage(record, index, view, to_files, keep_outputs):
    """What is wrong with an ok record, or None."""
    if index in view.duplicated:
        return "is not the only record of that item"
    if not keep_outputs:
        return None
    if record.data is not None:
        try:
            codec.decode(record.data)
        except ValueError as exc:
            return f"cannot be read ({exc})"
        return None
    if not to_files:
        return "holds text where outputs kept in memory are expected"
    frames = stored.frames_in(record.text)
    if frames != record.count:
        return (f"claims {record.count} structures but holds "
                f"{'no extended-XYZ frames' if frames is None else frames}")
    return None


def _last_line(path):
    """``" ends: LINE"`` with the last line of a job's log, or "" when it has none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 2000))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return " (missing)"
    return f" ends: {lines[-1][:300]}" if lines else ""


def _tries(view):
    return f"{view.tries_here} job{'s' if view.tries_here != 1 else ''} in this call"


class _Gathered:
    """The items of a new task, as they are gathered from the chunks."""

    def __init__(self, number):
        self.number = number
        self.indices, self.items, self.rngs, self.locations, self.keys = [], [], [], [], []

    def add(self, chunk, position):
        self.indices.append(chunk.first + position)
        self.items.append(chunk.items[position])
        self.rngs.append(chunk.rngs[position])
        self.locations.append(chunk.locations[position])
        self.keys.append(chunk.keys[position])


class _TaskView:
    """What this call knows of one task: its records, its last job and that job's state."""

    def __init__(self, entry, task_dir):
        self.entry = entry
        self.task_dir = task_dir
        results = read_results(task_dir)
        self.records = results.by_index()
        self.duplicated = results.duplicated()
        self.done = results.done
        # failures on record before this call: computed again, in a new task
        self.failed_before = {index for index, record in self.records.items() if not record.ok}
        self.delivered = set()
        self.job = entry.jobs[-1] if entry.jobs else None
        self.state = None
        self.ended = False
        self.to_submit = False
        self.waited_for = False
        self.tries_here = 0
        self.lost = None
        self._size = _size(task_dir)

    def submitted(self, job_id, array_index):
        self.job = (job_id, array_index)
        self.to_submit, self.ended, self.state, self.lost = False, False, None, None
        self.tries_here += 1

    def look(self, state):
        """Take the state Slurm gave for the last job (None: unknown to Slurm), then the results."""
        self.state = state
        self.ended = self.job is None or state is None or state in slurm.FINAL_STATES
        size = _size(self.task_dir)
        if size != self._size:
            self._size = size
            results = read_results(self.task_dir)
            self.done = results.done
            self.duplicated = results.duplicated()
            for index, record in results.by_index().items():
                if index not in self.delivered:
                    self.records.setdefault(index, record)

    def missing(self):
        """Input indices of the items that have no record."""
        return [index for index in self.entry.indices if index not in self.records and index not in self.delivered]

    def deliver(self, position):
        """Forget the record of the item at ``position``: its output was handed to the engine."""
        index = self.entry.indices[position]
        if self.records.pop(index, None) is not None:
            self.delivered.add(index)

    def job_name(self):
        return "(none)" if self.job is None else f"{self.job[0]}_{self.job[1]}"

    def summary_state(self):
        if not self.missing():
            return "DONE"
        if self.lost is not None:
            return "FAILED"
        if self.to_submit:
            return "TO_SUBMIT"
        if self.state is None:
            return "GONE" if self.ended else "SUBMITTED"
        return self.state


def _size(task_dir):
    try:
        return (task_dir / "results").stat().st_size
    except FileNotFoundError:
        return -1


class _ChunkFuture(Future):
    """The future of a chunk's outputs; waiting on it drives the polling of its jobs."""

    def __init__(self, jobs, parts):
        super().__init__()
        self.jobs = jobs
        self.parts = parts

    def result(self, timeout=None):
        self.jobs.wait_for(self)
        return super().result(timeout)

    def exception(self, timeout=None):
        self.jobs.wait_for(self)
        return super().exception(timeout)
