"""From an operation's call to task directories and the script of their job array.

The call is made as a local run makes it (the same OpCall, FramesCall, per-item
generators, locations), so that each job computes what the local run would have.
This is the driver's side; the engine does not call it yet.
"""

import shlex
import sys
from pathlib import Path

from wfl_like.autoparallelize.autoparainfo import AutoparaInfo
from wfl_like.autoparallelize.chunks import item_rngs, location_of_item
from wfl_like.autoparallelize.remote.task import RemoteTask, write_task
from wfl_like.autoparallelize.workers.opcall import op_name

TASK_PREFIX = "task_"


def build_tasks(op, inputs, outputs, remote_info, op_args=(), op_kwargs=None, autopara_info=None, rng=None):
    """Split a call of ``op`` into one :class:`RemoteTask` per queued job.

    Parameters
    ----------
    op : callable
        The operation, as :func:`~wfl_like.autoparallelize.autoparallelize` takes it.
    inputs : iterable
        Usually a ConfigSet; file inputs go as their frames' byte ranges.
    outputs : OutputSpec or None
        File outputs are rendered in the jobs (their texts go to the results).
    remote_info : RemoteInfo
        Gives the items per job.
    op_args, op_kwargs
        The operation's other arguments.
    autopara_info : AutoparaInfo or dict, optional
        The options of the call inside each job (chunk size, workers, retries, ...).
    rng : numpy.random.Generator, optional
        Parent of the per-item generators, spawned as a local run spawns them.

    Returns
    -------
    list of RemoteTask
    """
    # the engine's own steps, so that a job runs the very call a local run would
    from wfl_like.autoparallelize import base

    info = autopara_info if isinstance(autopara_info, AutoparaInfo) else AutoparaInfo(**(autopara_info or {}))
    info = info.with_defaults(None)
    kwargs = dict(op_kwargs or {})
    call = base._make_call(op, info, tuple(op_args), kwargs, rng, op_name(op))
    items, call = base._items_and_call(inputs, outputs, call, info, hashed=False)
    items = list(items)
    op_rng = rng.spawn(1)[0] if rng is not None else None
    rngs = [rng for _, rng in zip(items, item_rngs(op_rng))]
    renderer = outputs.renderer() if outputs is not None and outputs.files is not None else None
    size = remote_info.items_per_job(len(items))
    chunk_size = info.num_inputs_per_python_subprocess
    return [RemoteTask(call=call, indices=list(range(start, min(start + size, len(items)))),
                       items=items[start:start + size], rngs=rngs[start:start + size],
                       locations=[location_of_item(item) or () for item in items[start:start + size]],
                       renderer=renderer, skip_failed=info.skip_failed,
                       chunk_size=chunk_size if isinstance(chunk_size, int) else 1,
                       num_python_subprocesses=info.num_python_subprocesses, retries=info.retries,
                       timeout=info.timeout, initializer=tuple(info.initializer))
            for start in range(0, len(items), size)]


def write_tasks(tasks_root, tasks):
    """Write each task as ``tasks_root/task_K`` (K its array index); the directories, in order."""
    return [write_task(Path(tasks_root) / f"{TASK_PREFIX}{k}", task) for k, task in enumerate(tasks)]


def job_script(remote_info, tasks_root, python=None):
    """The shell lines of the job array: the user's setup, then job_main on ``task_$SLURM_ARRAY_TASK_ID``.

    Parameters
    ----------
    remote_info : RemoteInfo
    tasks_root : str or Path
        Holds the task directories (on the filesystem the jobs share).
    python : str, optional
        The interpreter of the jobs; the driver's own by default.
    """
    task_dir = shlex.quote(str(Path(tasks_root) / TASK_PREFIX)) + "${SLURM_ARRAY_TASK_ID}"
    command = f"{shlex.quote(python or sys.executable)} -m wfl_like.autoparallelize.remote.job_main {task_dir}"
    return "\n".join([*remote_info.setup_lines(), command]) + "\n"
