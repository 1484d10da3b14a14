"""The task directory of one queued job: ``task.pickle`` holds the call and its items.

The driver writes it on the shared filesystem before it submits; the job
(:mod:`.job_main`) reads it and writes its ``results`` beside it.  Inputs read from
extended-XYZ files travel as :class:`~wfl_like.autoparallelize.frame_items.FrameItem` s
(byte ranges, read in the job), other inputs as the objects themselves.
"""

import os
from dataclasses import dataclass
from pathlib import Path

TASK_NAME = "task.pickle"


@dataclass
class RemoteTask:
    """What one queued job computes.

    Attributes
    ----------
    call : OpCall or FramesCall
        The operation and its arguments, as the engine runs them.
    indices : list of int
        Each item's index in the whole input of the call.
    items : list
        The items (FrameItems, or the inputs themselves).
    rngs : list of numpy.random.Generator or None
        Per-item generators, spawned by the driver as a local run spawns them.
    locations : list of tuple
        Where each item's outputs go, resolved by the driver (``()`` for none).
    renderer : OutputRenderer or None
        Renders outputs that come back as objects; None: a single extended-XYZ file's.
    skip_failed : bool
        Whether an item may give no output.
    chunk_size : int
        Items per chunk inside the job (``num_inputs_per_python_subprocess``).
    num_python_subprocesses : int or None
        Worker processes of the job; None: ``WFL_NUM_PYTHON_SUBPROCESSES``, else the job's cores.
    retries : int
        Retries of an item whose worker died, inside the job.
    timeout : float or None
        Seconds per item inside the job.
    initializer : tuple
        ``(function or None, args)`` run once per worker.
    keep_outputs : bool
        ``False`` (the call has no outputs): records say that an item succeeded, not what it gave.
    code_key : str or None
        The fingerprint of the operation's code and arguments when the driver made the task:
        a job whose op (imported anew) no longer matches it computes nothing, since what
        it would give is not what the driver's journal will file it under.
    """

    call: object
    indices: list
    items: list
    rngs: list = None
    locations: list = None
    renderer: object = None
    skip_failed: bool = True
    chunk_size: int = 1
    num_python_subprocesses: int = None
    retries: int = 2
    timeout: float = None
    initializer: tuple = (None, ())
    keep_outputs: bool = True
    code_key: str = None

    def __post_init__(self):
        if len(self.items) != len(self.indices):
            raise ValueError(f"a task needs one index per item: {len(self.indices)} indices, {len(self.items)} items")
        if self.rngs is None:
            self.rngs = [None] * len(self.items)
        if self.locations is None:
            self.locations = [()] * len(self.items)


def write_task(task_dir, task):
    """Write ``task`` as ``task_dir/task.pickle`` (by value where need be: ops of a script), atomically.

    Returns
    -------
    Path
        The task directory (made if need be).
    """
    import cloudpickle

    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    final = task_dir / TASK_NAME
    partial = task_dir / (TASK_NAME + ".partial")
    with open(partial, "wb") as handle:
        cloudpickle.dump(task, handle)
        handle.flush()
        os.fsync(handle.fileno())
    # renamed into place: a job never reads half a task
    os.replace(partial, final)
    return task_dir


def load_task(task_dir):
    """The :class:`RemoteTask` of ``task_dir``.

    Raises
    ------
    FileNotFoundError
        No ``task.pickle`` there; the message names the directory.
    TypeError
        The file does not hold a RemoteTask.
    """
    import pickle

    path = Path(task_dir) / TASK_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {TASK_NAME} in task directory {str(task_dir)!r}: the job was given a "
                                f"directory the driver did not write")
    with open(path, "rb") as handle:
        task = pickle.load(handle)
    if not isinstance(task, RemoteTask):
        raise TypeError(f"{str(path)!r} holds a {type(task).__name__}, not a RemoteTask")
    return task
