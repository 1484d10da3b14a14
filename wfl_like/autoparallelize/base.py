"""The front door: :func:`autoparallelize` (its decorator form is in :mod:`.wrap`)."""

import contextlib
import itertools
import logging
import os
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from ase import Atoms

from wfl_like.autoparallelize.workers import mpi as mpipool_support
from wfl_like.autoparallelize.remote import queued
from wfl_like.autoparallelize.autoparainfo import AutoparaInfo, workers_read_files
from wfl_like.autoparallelize.resume.cache import RunCache, input_digests, inputs_fingerprint, journal_location
from wfl_like.autoparallelize.resume import stored
from wfl_like.autoparallelize.collector import collector_paused
from wfl_like.autoparallelize.chunks import AdaptiveChunkSize, make_chunks
from wfl_like.autoparallelize.frame_items import FrameReadError, Unstorable, count_frames, frame_items
from wfl_like.autoparallelize.workers.executors import available_cpus, chunk_runner, forks_workers, num_workers
from wfl_like.autoparallelize.workers.frames_task import FramesCall, check_output
from wfl_like.autoparallelize.workers.isolation import held_by_the_inputs_alone
from wfl_like.autoparallelize.workers.opcall import (PER_ITEM_INFO, OpCall, in_operation, in_worker, op_name,
                                                     takes_argument)
from wfl_like.autoparallelize.supervisor import one_line_reason, run_in_order
from wfl_like.configset import ConfigSet, OutputSpec
from wfl_like.io.renderer import RenderedOutput
from wfl_like.errors import AutoparallelizeError, FailedItem, FailedItemsWarning, OpOutputError, OutputIsInputError
from wfl_like.io.ownership import FOREIGN, WRITE
from wfl_like.manifest import Manifest
from wfl_like.progress import Progress, show_bar

log = logging.getLogger(__name__)


def autoparallelize(op, *args, default_autopara_info=None, **kwargs):
    """Apply ``op`` to every item of an input iterable, in chunks, in parallel.

    Called by the wrapper of an operation as
    ``autoparallelize(op, inputs, outputs, *op_args, autopara_info=..., **op_kwargs)``;
    ``inputs`` and ``outputs`` may also be given as keywords.

    Parameters
    ----------
    op : callable
        ``op(items, *op_args, **op_kwargs)`` takes a list of items (at ``iterable_arg``)
        and returns a list with one output per item: an ``Atoms``, a (nested) list of
        ``Atoms``, or ``None`` to skip the item.  An op that takes
        ``_autopara_per_item_info`` receives one dict per item with ``item_i`` (its
        index in the whole input) and, if ``rng`` was given, ``rng``: a
        ``numpy.random.Generator`` of its own.
    *args
        ``inputs`` (any iterable, usually a ConfigSet; a bare ``Atoms`` is one
        structure), ``outputs`` (OutputSpec or None), then the op's positional arguments.
    default_autopara_info : dict, optional
        The wrapper's defaults for :class:`AutoparaInfo` options.
    **kwargs
        The op's keyword arguments, plus optionally ``inputs``, ``outputs``,
        ``autopara_info`` (AutoparaInfo or dict) and ``rng`` (numpy Generator).

    Returns
    -------
    ConfigSet or None
        The outputs, or ``None`` when ``outputs`` is ``None``.
    """
    args, kwargs = list(args), dict(kwargs)
    inputs, outputs = _take_inputs_outputs(args, kwargs)
    if isinstance(inputs, Atoms):
        # one structure, as in wfl (an Atoms is also an iterable of its atoms)
        inputs = ConfigSet(inputs)
    info = kwargs.pop("autopara_info", None)
    if info is None:
        info = AutoparaInfo()
    elif isinstance(info, dict):
        info = AutoparaInfo(**info)
    elif not isinstance(info, AutoparaInfo):
        raise TypeError(f"autopara_info must be an AutoparaInfo or a dict, not {type(info).__name__}")
    info = info.with_defaults(default_autopara_info)
    rng = kwargs.pop("rng", None)
    _check_arguments(op_name(op), inputs, outputs, info, rng, args)
    # Spawned here, in the caller's thread, once per call whatever the call then does
    # (compute, resume, reuse), as wfl does: a script sharing one generator between calls
    # gets the same streams in each call on a rerun, however many of its calls are reused
    # or run at once.
    op_rng = rng.spawn(1)[0] if rng is not None else None
    if info.wait:
        return _run(op, inputs, outputs, info, rng, op_rng, tuple(args), kwargs)
    return _in_background(_run, op, inputs, outputs, info, rng, op_rng, tuple(args), kwargs)


def _in_background(function, *args):
    """A Future of ``function(*args)``, run in a thread of its own.

    The thread is not a daemon: a script that ends while a call runs waits for it, so that
    its outputs are written whole.  Inside a worker process the call runs at once (a worker
    runs its items one after another), and the Future comes back done.
    """
    future = Future()

    def run():
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = function(*args)
        except BaseException as exc:       # handed to whoever waits on the future, as an executor does
            future.set_exception(exc)
        else:
            future.set_result(result)

    if in_worker():
        run()
    else:
        threading.Thread(target=run, name=f"wfl_like {op_name(args[0])}", daemon=False).start()
    return future


def _take_inputs_outputs(args, kwargs):
    if "inputs" in kwargs:
        if "outputs" not in kwargs:
            raise TypeError("when inputs is given by keyword, outputs must be too (outputs=OutputSpec(...) or None)")
        return kwargs.pop("inputs"), kwargs.pop("outputs")
    if not args:
        raise TypeError("missing the inputs argument (an iterable of items, usually a ConfigSet)")
    inputs = args.pop(0)
    if "outputs" in kwargs:
        return inputs, kwargs.pop("outputs")
    if not args:
        raise TypeError("missing the outputs argument (an OutputSpec, or None for no outputs)")
    return inputs, args.pop(0)


def _run(op, inputs, outputs, info, rng, op_rng, args, kwargs):
    """One call, start to end; ``op_rng`` is its own generator, spawned from the caller's ``rng``."""
    name = op_name(op)
    if outputs is not None:
        # before the reuse of existing outputs: an input file "reused" as its own output
        # would be handed back unprocessed
        _refuse_output_over_input(inputs, outputs)
    call = _make_call(op, info, args, kwargs, rng, name)
    journal = journal_location(info.cache, outputs)
    if journal is None and info.cache_extra is not None:
        warnings.warn(f"cache_extra is not used by {name}: this call keeps no journal (cache=False, or outputs "
                      f"in memory without cache=PATH)", stacklevel=4)
    # opened (and locked) before the outputs are judged: a call whose key cannot be
    # computed fails before anything else, and a second run waits for none
    cache = None if journal is None else RunCache(
        journal, call, info.skip_failed, cache_extra=info.cache_extra, rng=op_rng, initializer=info.initializer,
        overwrite=outputs is not None and outputs.overwrite, outputs=outputs)
    try:
        digests = input_digests(inputs) if cache is not None else None
        fingerprint_of_inputs = inputs_fingerprint(inputs, digests) if cache is not None else None
        plan = _plan_outputs(outputs, cache, fingerprint_of_inputs)
        if plan.reuse is not None:
            _say_reused(plan, name, outputs)
            return outputs.to_ConfigSet()
        return _execute(call, inputs, outputs, info, op_rng, cache, fingerprint_of_inputs, plan, digests)
    finally:
        if cache is not None:
            cache.close()


def _make_call(op, info, args, kwargs, rng, name):
    per_item_info = takes_argument(op, PER_ITEM_INFO)
    if rng is not None and not per_item_info:
        warnings.warn(f"rng was given but operation {name} does not take {PER_ITEM_INFO}, so it "
                      f"cannot receive per-item generators; rng is not used", stacklevel=4)
    inherited_item_info = kwargs.pop(PER_ITEM_INFO, None)
    return OpCall(op=op, args=args, kwargs=kwargs, iterable_arg=info.iterable_arg,
                  per_item_info=per_item_info, inherited_item_info=inherited_item_info)


def _plan_outputs(outputs, cache, fingerprint_of_inputs):
    """What the outputs say this run does: reuse them as they are, or write them."""
    if outputs is None:
        return WRITE
    record = cache.record_of(outputs, fingerprint_of_inputs) if cache is not None else None
    return outputs.plan_run(record)


def _say_reused(plan, name, outputs):
    message = plan.message(name, outputs.paths)
    if plan.reuse == FOREIGN:
        warnings.warn(message, stacklevel=4)
    else:
        log.info("%s", message)


def _execute(call, inputs, outputs, info, rng, cache, fingerprint_of_inputs, plan, digests=None):
    name = call.name
    manifest = None
    try:
        if outputs is not None:
            # Before any work, and before the journal is touched: the output's own lock keeps
            # out a second writer whatever its journal settings.
            outputs.claim(replace_existing=plan.replace_existing)
            if outputs.files is not None:
                manifest = Manifest(call, inputs, outputs, _spread(info), digests)
                manifest.write()
        if cache is not None:
            cache.start()
        failures, n_items = _compute(call, inputs, outputs, info, rng, cache)
        if failures and info.errors == "raise":
            raise AutoparallelizeError(name, failures)
    except queued.JobsPending as pending:
        # wait_for_results=False: the jobs run on; a later call with the same arguments collects
        if outputs is not None:
            outputs.discard()
        if manifest is not None:
            manifest.finish("stopped", reason=str(pending))
        log.info("%s", pending)
        return None
    except BaseException as exc:
        if outputs is not None:
            outputs.discard()
        if manifest is not None:
            manifest.finish("stopped", failures=getattr(exc, "failures", ()), reason=one_line_reason(exc))
        raise
    if failures:
        warnings.warn(FailedItemsWarning(name, failures), stacklevel=4)
    if outputs is not None:
        outputs.close()
    if manifest is not None:
        manifest.finish("complete", n_items, failures, *((cache.computed, cache.reused) if cache is not None
                                                          else (n_items, 0)))
    if cache is not None:
        cache.finish(n_items, fingerprint_of_inputs, len(failures), outputs)
    if outputs is None:
        return None
    result = outputs.to_ConfigSet()
    result.failures = failures
    return result


def _spread(info):
    """How a call's work is spread, in the words of its options (for its manifest)."""
    spread = {"num_inputs_per_python_subprocess": info.num_inputs_per_python_subprocess}
    if info.remote_info is not None or os.environ.get("WFL_EXPYRE_INFO"):
        spread["queued_jobs"] = True
    if info.executor is not None:
        spread["executor"] = type(info.executor).__name__
    elif mpipool_support.active_executor() is not None:
        spread["executor"] = "MPI (WFL_MPIPOOL)"
    else:
        spread["num_python_subprocesses"] = num_workers(info.num_python_subprocesses)
    return spread


def _compute(call, inputs, outputs, info, rng, cache):
    """Run the op over every item not found in the journal; ``(failures, n_items)``.

    ``rng`` is the call's own generator, spawned once from the caller's by ``_run``.
    """
    name = call.name
    remote = queued.remote_info_of(info, name)
    if remote is not None:
        return _compute_queued(call, inputs, outputs, info, rng, cache, remote)
    executor = info.executor if info.executor is not None else mpipool_support.active_executor()
    if executor is not None and info.executor is None and info.num_python_subprocesses:
        warnings.warn(f"num_python_subprocesses={info.num_python_subprocesses} is ignored: {name} runs on "
                      f"the MPI ranks of WFL_MPIPOOL", stacklevel=5)
    workers = num_workers(info.num_python_subprocesses) if executor is None else 0
    if info.timeout is not None and (workers == 0 or executor is not None):
        warnings.warn(f"timeout={info.timeout} is not enforced for {name}: it needs wfl_like's own worker "
                      f"processes (num_python_subprocesses >= 1, no executor)", stacklevel=5)
    if info.initializer_timeout is not None and (workers == 0 or executor is not None):
        warnings.warn(f"initializer_timeout={info.initializer_timeout} is not enforced for {name}: it needs "
                      f"wfl_like's own worker processes (num_python_subprocesses >= 1, no executor)", stacklevel=5)
    cpus = available_cpus()
    if workers > cpus and not in_worker():
        warnings.warn(f"{name}: {workers} worker processes were asked for, but this process may run on only "
                      f"{cpus} CPUs; they will share them (at most one worker per chunk is started)",
                      stacklevel=5)
    where = (f"executor {type(executor).__name__}" if executor is not None
             else f"{workers} worker processes" if workers else "serial")
    # in wfl's words, so that what a wfl user greps for is there
    log.info("%s: %s, num_inputs_per_python_subprocess=%s", name, where, info.num_inputs_per_python_subprocess)
    sizer = AdaptiveChunkSize() if info.num_inputs_per_python_subprocess == "auto" else None
    items, call = _items_and_call(inputs, outputs, call, info, hashed=cache is not None)
    inherited = _inheritable(items, info, workers, executor)
    lendable_inputs = None
    if inherited is not None:
        # before anything of the call's own holds them: which inputs nothing else holds
        lendable_inputs = held_by_the_inputs_alone(inherited, items)
        items = inherited
    progress = _progress_of(name, inputs, items, info)
    rendered_by_workers = isinstance(call, FramesCall) and call.renderer is not None
    chunks = make_chunks(items, sizer or info.num_inputs_per_python_subprocess, rng,
                         lookup=cache.lookup_many if cache is not None else None)
    initializer_timeout = info.initializer_timeout
    if initializer_timeout is None and info.initializer[0] is not None:
        # a per-item limit also bounds the user's set-up, unless it is given a limit of its own
        initializer_timeout = info.timeout
    # outputs computed in other processes (wfl_like's workers, the MPI ranks; an executor of the
    # caller's may run the op in this one) are gathered with the collector paused (see collector)
    elsewhere = executor is mpipool_support.active_executor() if executor is not None else workers and not in_worker()
    paused = collector_paused() if elsewhere and info.wait else contextlib.nullcontext()
    with paused, chunk_runner(call, workers, info.initializer, executor=executor,
                              initializer_timeout=initializer_timeout, max_items_per_worker=info.max_items_per_worker,
                              inputs=inherited, lendable_inputs=lendable_inputs) as (submit, slots):
        # results computed in other processes stream in: the journal may hold their rows a moment
        storing = _Storing(outputs, cache, hold=bool(elsewhere))
        results = run_in_order(submit, chunks, slots, name, retries=info.retries, timeout=info.timeout,
                               chunk_size=sizer, progress=progress, before_blocking=storing.before_blocking)
        with contextlib.closing(results):      # an error while storing withdraws the queued chunks
            try:
                return _store_all(results, storing, name, info.skip_failed, fail_fast=info.fail_fast,
                                  rendered_by_workers=rendered_by_workers)
            except BaseException:
                # before the workers are torn down (which a forced stop may cut short)
                storing.abandon()
                raise


def _compute_queued(call, inputs, outputs, info, rng, cache, remote):
    """:func:`_compute` with the chunks run as queued jobs of ``remote`` (a RemoteInfo).

    Every chunk (of a job's size) is made and submitted before the first is waited for:
    the jobs go out as one array, and those of an earlier run that died are found again.
    """
    name = call.name
    if cache is None:
        raise ValueError(f"{name}: remote_info needs a journal, which also records the queued jobs: give file "
                         f"outputs (OutputSpec('out.xyz')) or cache=PATH, and do not set cache=False")
    items, call = _items_and_call(inputs, outputs, call, info, hashed=True)
    progress = _progress_of(name, inputs, items, info)
    per_job = remote.items_per_job(info.num_inputs_per_python_subprocess)
    chunks = list(make_chunks(items, per_job, rng, lookup=cache.lookup_many))
    state_dir = queued.state_dir_of(cache.journal.path, fresh=outputs is not None and outputs.overwrite,
                                    call_key=cache.call_key)
    jobs = queued.QueuedJobs(remote, call, info, outputs, state_dir, per_job, progress=progress,
                             call_key=cache.call_key)
    try:
        futures = {chunk.first: jobs.submit(chunk) for chunk in chunks if chunk.cached is None}
        jobs.flush()
        if not remote.wait_for_results and not jobs.all_settled():
            raise queued.JobsPending(name, jobs)
        results = run_in_order(lambda chunk, timeout: futures[chunk.first], chunks, max(1, len(chunks)), name,
                               retries=0, progress=progress)
        with contextlib.closing(results):
            try:
                returned = _store_all(results, _Storing(outputs, cache, hold=False), name, info.skip_failed,
                                      fail_fast=info.fail_fast,
                                      rendered_by_workers=outputs is not None and outputs.files is not None)
            except AutoparallelizeError:
                jobs.collected()        # every item was heard of: failures end the call as outputs do
                raise
            jobs.collected()
            return returned
    except (Exception, KeyboardInterrupt):
        jobs.say_left_queued()
        raise
    finally:
        progress.close()
        jobs.close()


def _progress_of(name, inputs, items, info):
    """The Progress of a call: a bar where one is wanted (never in a worker, nor for a call an
    operation makes: the enclosing call's bar counts its items), with the total where it is known
    without reading the inputs (frames of indexed files, a list)."""
    bar = show_bar(info.progress) and not in_worker() and not in_operation()
    total = None
    if bar:
        if isinstance(items, (list, tuple)):
            total = len(items)
        elif isinstance(inputs, ConfigSet) and inputs.frame_files() is not None:
            total = count_frames(inputs.frame_files())
    return Progress(name, total=total, bar=bar)


def _items_and_call(inputs, outputs, call, info, hashed):
    """What the chunks are made of, and the call that runs them.

    Inputs in extended-XYZ files go as their frames' byte ranges, and the workers read
    them (and render file outputs) themselves; anything else goes as the items, to ``call``.
    """
    frame_files = inputs.frame_files() if isinstance(inputs, ConfigSet) else None
    if frame_files is None or not workers_read_files(info.workers_read_files):
        return inputs, call
    items = frame_items(frame_files, hashed=hashed)
    if outputs is None or outputs.files is None:
        return items, FramesCall(call)
    renderer = outputs.renderer()
    if not renderer.single_file:
        # refused where the driver meets the item, as when it stored there: before its chunk runs
        items = _with_file_checked(items, renderer)
    return items, FramesCall(call, renderer, info.skip_failed, journaled=hashed)


def _inheritable(items, info, workers, executor):
    """The inputs as a tuple for forked workers to inherit, or None where chunks carry their items.

    Only a list or a tuple qualifies: held whole in memory before the workers are forked,
    and read by the chunker without a change.  A ConfigSet does not: its iteration writes
    each structure's location into its ``info`` as it goes, so a structure it holds twice
    carries each of its locations in turn, which a copy taken before the first fork would
    not.  A call with ``wait=False`` runs beside the caller, who may change the structures
    meanwhile: its chunks carry their items, as they stood when each was sent.
    """
    if not info.wait or not forks_workers(workers, executor):
        return None
    if isinstance(items, (list, tuple)):
        return tuple(items)
    return None


def _with_file_checked(items, renderer):
    for item in items:
        renderer.file_of(item.location)
        yield item


# A run whose first this-many items all failed for one same reason, with no success at
# all, is stopped: that is a setup problem (a bad argument, a missing file), and going
# through every remaining item would only repeat it.
FAIL_FAST_AFTER = 10


def _store_all(results, storing, name, skip_failed, fail_fast=True, rendered_by_workers=False):
    """Check, journal, then store, each chunk's outputs as it comes.

    File outputs are rendered to their final text before they are journaled (by the
    workers, for inputs they read themselves): an output the file cannot hold is a failed
    item (never journaled as done), so that ``errors="skip"`` completes and a rerun does
    not fail the same way.  A frame that a worker could not parse stops the call, once
    what came back before it is journaled.  ``rendered_by_workers``: the outputs computed
    come as the RenderedOutput of their text (the frames path with file outputs).

    Returns
    -------
    (list of FailedItem, int)
        The failures of the whole run, and the number of input items.
    """
    failures, succeeded, n_items = [], 0, 0
    outputs, cache = storing.outputs, storing.cache
    for result in results:
        done, failed, rendered, packed = _sorted_chunk(result, outputs, name, skip_failed, cache,
                                                       rendered_by_workers, storing.to_files)
        storing.journal(result.chunk, done, failed, packed)
        unreadable = next((f.exception for f in failed if isinstance(f.exception, FrameReadError)), None)
        if unreadable is not None:
            raise unreadable
        storing.store(result.chunk, done, rendered)
        failures.extend(sorted(failed, key=lambda failure: failure.index))
        succeeded += len(done)
        n_items += len(result.chunk.items)
        if (fail_fast and not succeeded and len(failures) >= FAIL_FAST_AFTER
                and len({f.reason for f in failures}) == 1):
            raise AutoparallelizeError(name, failures, stopped_early=True)
    storing.finish()
    return failures, n_items


class _Storing:
    """Journals each chunk's outputs, then stores them, in input order.

    With ``hold``, the journal may hold a chunk's rows for a moment, to commit them with
    the next chunks' (:mod:`~wfl_like.autoparallelize.resume.journal`); the chunk's outputs
    are stored once its rows are committed, so that nothing reaches the output files that
    the journal does not have.

    Parameters
    ----------
    outputs : OutputSpec or None
    cache : RunCache or None
    hold : bool
        Results come from other processes, as a stream: rows may be held (never while the
        driver computes a chunk itself, since that may take any time).
    """

    def __init__(self, outputs, cache, hold):
        self.outputs, self.cache = outputs, cache
        self.to_files = outputs is not None and outputs.files is not None
        self._unstored = []       # (chunk, done, rendered) journaled, waiting for their rows' commit
        if cache is not None:
            cache.journal.hold = hold

    def journal(self, chunk, done, failed, packed):
        if self.cache is not None:
            self.cache.record(chunk, done, failed, packed)

    def store(self, chunk, done, rendered):
        self._unstored.append((chunk, done, rendered))
        if self.cache is None or not self.cache.journal.holding:
            self._store_unstored()

    def before_blocking(self, future=None):
        """Before the driver may block (see :meth:`RunCache.before_blocking`): commit what the
        journal holds, unless that can wait, and store what the commit covers."""
        if self.cache is not None and self.cache.before_blocking(future):
            self._store_unstored()

    def finish(self):
        if self.cache is not None:
            self.cache.journal.commit()
        self._store_unstored()

    def abandon(self):
        """The call stops on an error: commit what the journal holds (its outputs are not
        stored: the output files are discarded), telling rather than raising a failure."""
        if self.cache is not None:
            self.cache.journal.commit_or_warn()

    def _store_unstored(self):
        unstored, self._unstored = self._unstored, []
        for chunk, done, rendered in unstored:
            _write_chunk(self.outputs, self.to_files, rendered, done, chunk)


def _sorted_chunk(result, outputs, name, skip_failed, cache, rendered_by_workers, to_files):
    """A chunk's items sorted into ``(done, failed, rendered, packed)``: the outputs to journal
    and store, the failures, the texts to write (file outputs), and the journal forms the
    workers made."""
    if not (to_files or rendered_by_workers or result.failures) and all(
            type(output) is Atoms for output in result.outputs):
        # the common case, asked of every chunk: nothing failed, and every output can be stored
        return list(zip(result.chunk.indices, result.outputs)), [], [], {}
    done, failed, rendered, packed = [], list(result.failures), [], {}
    failed_indices = {failure.index for failure in failed}
    locations = dict(zip(result.chunk.indices, result.chunk.locations)) if to_files else None
    where = _where(outputs)
    for index, output in zip(result.chunk.indices, result.outputs):
        if index in failed_indices:
            continue
        if rendered_by_workers:
            # compressed for the journal by the worker: kept, not made again here
            output, packed[index] = stored.unwrapped(output)
        if isinstance(output, Unstorable):
            failed.append(FailedItem(index, output.reason, "", output.error))
            continue
        try:
            if to_files:
                as_text = rendered_by_workers or result.chunk.cached is not None
                text = _rendered(output, outputs, name, skip_failed, locations[index], as_text)
                if text is not None:
                    rendered.append(text)
            else:
                check_output(output, name, skip_failed, where)
        except OpOutputError as exc:
            # the record names the item; the reason keeps the exception's own type
            reason = one_line_reason(exc)
            if result.chunk.cached is not None:
                # not the op's doing: the journal held it (tampered, or written otherwise)
                reason += (f" (this output came from the journal {cache.journal.path}; the next run "
                           f"computes it again)")
            failed.append(FailedItem(index, reason, "", exc))
            continue
        # journaled as it came: text stays text; objects stay objects, since the text of an
        # output stored without a location holds the number it was given in this run
        done.append((index, output))
    return done, failed, rendered, packed


def _write_chunk(outputs, to_files, rendered, done, chunk):
    """Store a chunk's outputs: its texts into the files, or its objects in memory."""
    if to_files:
        for text in _joined(rendered):
            outputs.store_rendered(text)
    elif outputs is not None:
        # ``done`` is in chunk order: an item's location is found by its place in the chunk,
        # with no dictionary of the chunk's locations built for it
        first, locations = chunk.first, chunk.locations
        outputs.store_many((output, locations[index - first] or "") for index, output in done)


def _rendered(output, outputs, name, skip_failed, location, as_text):
    """The RenderedOutput of one item's output for file ``outputs`` (None for no output).

    Where outputs may come as text (``as_text``: rendered by a worker, or reused from the
    journal), a RenderedOutput is checked to fit the files and taken as it is; objects are
    checked and rendered here.
    """
    if as_text and isinstance(output, RenderedOutput):
        if not (isinstance(output.text, str) and 0 <= output.file_i < len(outputs.files)
                and isinstance(output.count, int) and output.count >= 0):
            raise OpOutputError(f"the rendered output of {name} does not fit {[str(p) for p in outputs.paths]} "
                                f"(file {output.file_i!r}, {type(output.text).__name__} text)")
        return output
    _check_output(output, outputs, name, skip_failed)
    if output is None:
        return None
    return outputs.render(output, location or "")


def _joined(rendered):
    """Consecutive outputs to one file as one text: a chunk is written with one write (and one flush)
    per file it goes to, not one per structure."""
    for file_i, group in itertools.groupby(rendered, key=lambda output: output.file_i):
        group = list(group)
        if len(group) == 1:
            yield group[0]
        else:
            yield RenderedOutput(file_i, "".join(output.text for output in group), sum(o.count for o in group))


def _check_output(output, outputs, name, skip_failed):
    """Refuse (OpOutputError) an item's output that cannot be stored."""
    check_output(output, name, skip_failed, _where(outputs))


def _where(outputs):
    """Where outputs go, for check_output's messages: None where they are not stored."""
    if outputs is None:
        return None
    return [str(p) for p in outputs.paths] if outputs.files is not None else "an OutputSpec in memory"


def _refuse_output_over_input(inputs, outputs):
    """Refuse an output file that is also an input file: under any spelling of its path, or as a
    hard or symbolic link to it (the same device and inode)."""
    if outputs.files is None or not isinstance(inputs, ConfigSet):
        return
    read = {}
    for path in inputs.files():
        with contextlib.suppress(OSError):
            stat = path.stat()
            read[(stat.st_dev, stat.st_ino)] = path
    for path in outputs.paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        same = read.get((stat.st_dev, stat.st_ino))
        if same is not None:
            how = "" if path.resolve() == Path(same).resolve() else f" (a link to input {str(same)!r})"
            raise OutputIsInputError(f"output file {str(path)!r} is also an input{how}; writing it would "
                                     f"destroy the input: write the outputs to another file")


def _check_arguments(name, inputs, outputs, info, rng, args):
    try:
        iter(inputs)
    except TypeError:
        raise TypeError(f"inputs of {name} must be iterable (a ConfigSet, a list of Atoms, ...), "
                        f"not {type(inputs).__name__}") from None
    if outputs is not None and not isinstance(outputs, OutputSpec):
        raise TypeError(f"outputs of {name} must be an OutputSpec or None, not {type(outputs).__name__}")
    if outputs is not None and outputs.closed:
        raise ValueError(f"outputs of {name} ({outputs!r}) was already closed; give a new OutputSpec")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                        f"not {type(rng).__name__}")
    if isinstance(info.iterable_arg, int) and len(args) < info.iterable_arg:
        raise TypeError(f"iterable_arg={info.iterable_arg} but only {len(args)} positional arguments "
                        f"were given to {name}")

