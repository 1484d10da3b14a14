"""What runs inside a queued job: ``python -m wfl_like.autoparallelize.remote.job_main TASK_DIR``.

The task's items go through the usual engine (chunks, a worker pool, retries of dead
workers' items, per-item failures), and each item's record is appended to
``TASK_DIR/results`` as its chunk comes back, in input order (:mod:`.results`).  A job
that takes up a task already partly done (requeued, resubmitted) computes only the
items that have no record yet.  The exit status is 0 once every item has a record,
failed ones included; anything else means the job itself could not run.
"""

import argparse
import logging
import os
import sys

from wfl_like.autoparallelize.chunks import Chunk
from wfl_like.autoparallelize.frame_items import Unstorable
from wfl_like.autoparallelize.remote.remote_info import IN_QUEUED_JOB_ENV
from wfl_like.autoparallelize.resume import codec
from wfl_like.autoparallelize.remote.results import ItemRecord, ResultsWriter
from wfl_like.autoparallelize.remote.task import load_task
from wfl_like.autoparallelize.supervisor import one_line_reason, run_in_order
from wfl_like.autoparallelize.workers.executors import NUM_PROCESSES_ENV, chunk_runner, num_workers
from wfl_like.autoparallelize.workers.frames_task import check_output
from wfl_like.errors import OpOutputError
from wfl_like.io.renderer import RenderedOutput

log = logging.getLogger(__name__)

CPUS_ENV = "SLURM_CPUS_ON_NODE"
# where outputs that come back as objects go, for messages
_IN_MEMORY = "the results of a queued job (outputs in memory)"


def run_task(task_dir):
    """Compute the items of ``task_dir`` that have no record yet, appending a record per item.

    Returns
    -------
    int
        How many items were computed in this run.
    """
    task = load_task(task_dir)
    with ResultsWriter(task_dir) as writer:
        todo = [k for k, index in enumerate(task.indices) if index not in writer.done_before]
        changed = _changed_code(task) if todo else None
        if changed is not None:
            for k in todo:
                writer.append(ItemRecord(task.indices[k], False, reason=changed))
            todo = []
        if writer.done_before:
            log.info("task %s: %d items recorded by an earlier job, %d to compute", task_dir,
                     len(task.indices) - len(todo), len(todo))
        if todo:
            workers = job_workers(task.num_python_subprocesses)
            with chunk_runner(task.call, workers, task.initializer) as (submit, slots):
                results = run_in_order(submit, task_chunks(task, todo), slots, task.call.name,
                                       retries=task.retries, timeout=task.timeout)
                for result in results:
                    for record in chunk_records(task, result):
                        writer.append(record)
        writer.finish(len(task.indices))
    return len(todo)


def _changed_code(task):
    """Why the task's op may not run here (its code or arguments are not those the driver
    filed the task under), or None."""
    if task.code_key is None:
        return None
    from wfl_like.autoparallelize.remote.jobs import code_key_of

    if code_key_of(task.call, task.initializer) == task.code_key:
        return None
    return (f"ChangedCodeError: the code of {task.call.name} (or what it reads) changed after the driver "
            f"wrote this task, so its outputs would be filed under the old code; rerun the driver")


def job_workers(requested):
    """Worker processes in the job: ``requested``, else ``WFL_NUM_PYTHON_SUBPROCESSES``, else the
    job's cores on its node (``SLURM_CPUS_ON_NODE``), else none."""
    if requested is not None or os.environ.get(NUM_PROCESSES_ENV, "").strip():
        return num_workers(requested)
    cpus = os.environ.get(CPUS_ENV, "").strip()
    return int(cpus) if cpus.isdigit() else 0


def task_chunks(task, positions):
    """Chunks of the items at ``positions`` of the task: consecutive input indices, at most
    ``task.chunk_size`` items each; a chunk's ``locations`` are the task's resolved ones."""
    run = []
    for position in positions:
        if run and (position != run[-1] + 1 or task.indices[position] != task.indices[run[-1]] + 1
                    or len(run) >= task.chunk_size):
            yield _chunk(task, run)
            run = []
        run.append(position)
    if run:
        yield _chunk(task, run)


def _chunk(task, positions):
    return Chunk(first=task.indices[positions[0]], items=[task.items[p] for p in positions],
                 locations=[task.locations[p] for p in positions], rngs=[task.rngs[p] for p in positions])


def chunk_records(task, result):
    """One :class:`ItemRecord` per item of a ChunkResult, in order."""
    failed = {failure.index: failure for failure in result.failures}
    for index, output, location in zip(result.chunk.indices, result.outputs, result.chunk.locations):
        if index in failed:
            yield ItemRecord(index, False, reason=failed[index].reason)
        else:
            yield output_record(task, index, output, location)


def output_record(task, index, output, location):
    """The record of an item whose operation returned ``output``."""
    if isinstance(output, Unstorable):
        return ItemRecord(index, False, reason=output.reason)
    if not task.keep_outputs:
        return ItemRecord(index, True)      # the call has no outputs: whatever the op gave is dropped
    if isinstance(output, RenderedOutput):
        return ItemRecord(index, True, output.text, output.file_i, output.count)
    try:
        check_output(output, task.call.name, task.skip_failed,
                     task.renderer.paths if task.renderer is not None else _IN_MEMORY)
        if output is None:
            return ItemRecord(index, True)
        if task.renderer is None:
            # outputs kept in memory travel exactly, in the journal's data-only format
            return ItemRecord(index, True, count=1, data=codec.encode(output))
        rendered = task.renderer.render(output, tuple(location or ()))
    except (OpOutputError, ValueError, codec.UnencodableError) as exc:
        return ItemRecord(index, False, reason=one_line_reason(exc))
    return ItemRecord(index, True, rendered.text, rendered.file_i, rendered.count)


def main(argv=None):
    """Run the task directory given on the command line; the exit status says whether it ran."""
    parser = argparse.ArgumentParser(prog="python -m wfl_like.autoparallelize.remote.job_main",
                                     description="Compute the items of one queued job's task directory.")
    parser.add_argument("task_dir", help="directory holding task.pickle; results are appended there")
    args = parser.parse_args(argv)
    # an operation that calls another wrapped one runs it here, not as more queued jobs
    os.environ[IN_QUEUED_JOB_ENV] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        computed = run_task(args.task_dir)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    log.info("task %s: %d items computed, every item recorded", args.task_dir, computed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
