"""From an operation's call to task directories and the script of their job array.

The call is made as a local run makes it (the same OpCall, FramesCall, per-item
generators, locations), so that each job computes what the local run would have.
This is the driver's side (:mod:`.queued` calls it).
"""

import dataclasses
import os
import shlex
import sys
from pathlib import Path

from wfl_like.autoparallelize.autoparainfo import AutoparaInfo
from wfl_like.autoparallelize.chunks import item_rngs, location_of_item
from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.autoparallelize.remote.task import RemoteTask, write_task
from wfl_like.autoparallelize.workers.frames_task import FramesCall
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
    size = remote_info.items_per_job(info.num_inputs_per_python_subprocess)
    call = task_call(call)
    return [make_task(call, list(range(start, min(start + size, len(items)))), items[start:start + size],
                      rngs[start:start + size], [location_of_item(item) for item in items[start:start + size]],
                      renderer, info)
            for start in range(0, len(items), size)]


def code_key_of(call, initializer):
    """The fingerprint of a call's operation, code and arguments (as the journal's key holds them)."""
    from wfl_like.autoparallelize.resume.fingerprint import fingerprint_call

    inner = call.call if isinstance(call, FramesCall) else call
    return fingerprint_call(inner.op, inner.args, inner.kwargs, inner.iterable_arg, tuple(initializer))


def task_call(call):
    """The call as a job runs it: a FramesCall renders its outputs but does not pack them for a
    journal (the job's results file holds text, the driver journals it)."""
    if isinstance(call, FramesCall) and call.journaled:
        return FramesCall(call.call, call.renderer, call.skip_failed, journaled=False)
    return call


def make_task(call, indices, items, rngs, locations, renderer, info, keep_outputs=True, code_key=None):
    """A :class:`RemoteTask` of these items, to be run with the options of ``info`` (AutoparaInfo).

    Frames of input files are given by absolute paths: the job runs in another directory.
    ``keep_outputs`` and ``code_key`` are those of :class:`RemoteTask`.
    """
    items = [dataclasses.replace(item, path=os.path.abspath(item.path)) if isinstance(item, FrameItem) else item
             for item in items]
    chunk_size = info.num_inputs_per_python_subprocess
    return RemoteTask(call=call, indices=list(indices), items=items, rngs=list(rngs),
                      locations=[tuple(loc or ()) for loc in locations], renderer=renderer,
                      skip_failed=info.skip_failed, chunk_size=chunk_size if isinstance(chunk_size, int) else 1,
                      num_python_subprocesses=info.num_python_subprocesses, retries=info.retries,
                      timeout=info.timeout, initializer=tuple(info.initializer), keep_outputs=keep_outputs,
                      code_key=code_key)


def write_tasks(tasks_root, tasks):
    """Write each task as ``tasks_root/task_K`` (K its array index); the directories, in order."""
    return [write_task(Path(tasks_root) / f"{TASK_PREFIX}{k}", task) for k, task in enumerate(tasks)]


def write_listing(path, task_dirs):
    """Write the task directories of a job array, one per line (line k+1: array index k)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{Path(task_dir).resolve()}\n" for task_dir in task_dirs))
    return path


def job_script(remote_info, listing, python=None):
    """The shell lines of a job array: the user's setup, then job_main on the task of the array index.

    Parameters
    ----------
    remote_info : RemoteInfo
    listing : str or Path
        The file of :func:`write_listing`: array index k runs the task of line k+1.
    python : str, optional
        The interpreter of the jobs; the driver's own by default.
    """
    listing = shlex.quote(str(Path(listing).resolve()))
    command = (f'TASK_DIR="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {listing})"\n'
               f'{shlex.quote(python or sys.executable)} -m wfl_like.autoparallelize.remote.job_main "$TASK_DIR"')
    return "\n".join([*remote_info.setup_lines(), command]) + "\n"
