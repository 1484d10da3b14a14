"""The driver's record of its queued work: the tasks it made and the jobs it submitted for them.

It is the file ``jobs`` of the call's state directory (beside the call's journal, on
the filesystem the jobs share), one checksummed line per record (:mod:`.results`),
each fsynced before the driver goes on:

- ``task``: a task directory was written, holding the items with these cache keys,
  input indices and locations;
- ``submitting``: ``sbatch`` is about to run for these tasks, with this token in the
  job's comment (so that a driver killed before it heard the job id finds the job);
- ``job``: ``sbatch`` gave this job id for these tasks (array index k: the k-th task);
- ``forgotten``: a ``submitting`` token whose job Slurm does not know (never submitted);
- ``call``: the calls that made the tasks after it have this call key;
- ``collected``: that call stored every output of its tasks (and so ended).

A rerun reads it back, so that an item whose task exists is taken from that task (its
results, or its job still queued) and never submitted again.  Items are matched by
their cache keys, which hold the operation, its arguments and the item itself: a call
with other arguments matches none of them.
"""

from dataclasses import dataclass, field
from pathlib import Path

from wfl_like.autoparallelize.remote.results import LineWriter, read_lines

REGISTRY_NAME = "jobs"
_REMEDY = "remove the state directory to forget its jobs (running jobs are then computed again)"


@dataclass
class TaskEntry:
    """One task directory, as the registry knows it.

    Attributes
    ----------
    number : int
        Its number, in the order tasks were made.
    name : str
        Its directory in the state directory: ``task_<number>_<token>``, never used twice, so
        that a job of a call that was replaced (or forgotten) never writes into a new task's
        directory.
    indices : list of int
        Input indices of its items in the run that made it (its records name these).
    keys : list of str
        The cache keys of its items, in order.
    locations : list of tuple
        Where each item's outputs went in that run.
    jobs : list of (str, int)
        ``(job id, array index)`` of the jobs submitted for it, oldest first.
    """

    number: int
    name: str
    indices: list
    keys: list
    locations: list
    jobs: list = field(default_factory=list)


class JobRegistry:
    """The ``jobs`` file of a state directory, read at once and appended to as the driver goes.

    Parameters
    ----------
    state_dir : str or Path
        Made if need be.

    Attributes
    ----------
    tasks : dict
        ``{number: TaskEntry}``.
    unconfirmed : dict
        ``{token: [task numbers]}`` of submissions whose job id was never recorded (the
        driver died around ``sbatch``).
    call_key : str or None
        The call key of the last ``call`` record.
    collected : bool
        Whether that call collected its outputs since.
    """

    def __init__(self, state_dir):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / REGISTRY_NAME
        self.tasks, self.unconfirmed = {}, {}
        self.call_key, self.collected = None, False
        self._tasks_of_key = {}
        payloads, self._end = read_lines(self.path, _REMEDY)
        for line_no, payload in payloads:
            self._take(payload, line_no)
        # opened at the first record: a registry only read (to look at a run) changes nothing
        self._writer = None

    def _take(self, payload, line_no):
        try:
            kind = payload["kind"]
            if kind == "task":
                entry = TaskEntry(int(payload["task"]), str(payload["dir"]), [int(i) for i in payload["indices"]],
                                  [str(k) for k in payload["keys"]],
                                  [tuple(int(n) for n in loc) for loc in payload["locations"]])
                if not (len(entry.indices) == len(entry.keys) == len(entry.locations)) or "/" in entry.name:
                    raise ValueError("task")
                self._add(entry)
            elif kind == "submitting":
                self.unconfirmed[str(payload["token"])] = [int(n) for n in payload["tasks"]]
            elif kind == "job":
                self.unconfirmed.pop(str(payload["token"]), None)
                for array_index, number in enumerate(payload["tasks"]):
                    self.tasks[int(number)].jobs.append((str(payload["job_id"]), array_index))
            elif kind == "forgotten":
                self.unconfirmed.pop(str(payload["token"]), None)
            elif kind == "call":
                self.call_key, self.collected = str(payload["key"]), False
            elif kind == "collected":
                self.collected = True
            else:
                raise ValueError(kind)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"file {str(self.path)!r} line {line_no} is not a job record of wfl_like; "
                             f"{_REMEDY}") from None

    def _add(self, entry):
        self.tasks[entry.number] = entry
        for position, key in enumerate(entry.keys):
            self._tasks_of_key.setdefault(key, []).append((entry.number, position))

    def holders_of(self, key):
        """``[(TaskEntry, position)]`` of every place holding an item with cache key ``key``, latest first.

        Latest first: an item computed again after it failed is taken from its new task.
        Several places: identical structures in one input are items of their own, each
        with its own record.
        """
        return [(self.tasks[number], position) for number, position in reversed(self._tasks_of_key.get(key, ()))]

    def next_number(self):
        return max(self.tasks, default=-1) + 1

    def _write(self, payload):
        if self._writer is None:
            self._writer = LineWriter(self.path, self._end)
        self._writer.write_payload(payload)

    def add_task(self, number, name, indices, keys, locations):
        """Record a task directory (``name``, in the state directory), once it is written."""
        locations = [list(loc or ()) for loc in locations]
        self._write({"kind": "task", "task": number, "dir": name, "indices": list(indices), "keys": list(keys),
                     "locations": locations})
        entry = TaskEntry(number, name, list(indices), list(keys), [tuple(loc) for loc in locations])
        self._add(entry)
        return entry

    def submitting(self, token, numbers):
        """Record that ``sbatch`` is about to run for tasks ``numbers`` with ``token`` in its comment."""
        self._write({"kind": "submitting", "token": token, "tasks": list(numbers)})
        self.unconfirmed[token] = list(numbers)

    def submitted(self, token, job_id, numbers):
        """Record the job id ``sbatch`` gave for tasks ``numbers`` (array index k: ``numbers[k]``)."""
        self._write({"kind": "job", "token": token, "job_id": str(job_id), "tasks": list(numbers)})
        self.unconfirmed.pop(token, None)
        for array_index, number in enumerate(numbers):
            self.tasks[number].jobs.append((str(job_id), array_index))

    def begin_call(self, call_key):
        """Record that the tasks made from now on are of the call with ``call_key``."""
        if self.call_key != call_key or self.collected:
            self._write({"kind": "call", "key": call_key})
            self.call_key, self.collected = call_key, False

    def mark_collected(self):
        """Record that the call has stored every output of its tasks."""
        if self.call_key is not None and not self.collected:
            self._write({"kind": "collected"})
            self.collected = True

    def forget(self, token):
        """Record that the submission ``token`` never reached Slurm."""
        self._write({"kind": "forgotten", "token": token})
        self.unconfirmed.pop(token, None)

    def close(self):
        if self._writer is not None:
            self._writer.close()
