"""A run's use of its journal: what can be reused, what must be computed, and why.

An item's output is reused when its cache key is the one it was computed with: the
operation's identity and code, its arguments (not the inputs and outputs, nor how the
work is spread: process count, chunk size, retries, timeout), the item's content and
its random stream.  The content of a frame of an input file (a
:class:`~wfl_like.autoparallelize.frame_items.FrameItem`) is its raw bytes, not its place
(a stored location is in the bytes); as its output is kept as the text of the output file,
what decides that text (the layout of the output files, tags, write arguments) is part of
its key too, and a text found for a frame that moved is moved to the frame's new location
(:mod:`~wfl_like.autoparallelize.resume.relocate`), or the frame is computed again where
that cannot be done exactly.  Failed items are never reused.
"""

import concurrent.futures
import hashlib
import logging
import warnings
from pathlib import Path

from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.autoparallelize.resume import codec, stored
from wfl_like.autoparallelize.resume.relocate import moved_output
from wfl_like.autoparallelize.resume.fingerprint import (describe, fingerprint, fingerprint_call, fingerprint_extra,
                                                         frame_key)
from wfl_like.autoparallelize.resume.journal import Journal, journal_path
from wfl_like import io
from wfl_like.configset import ConfigSet
from wfl_like.io.ownership import JournalRecord

log = logging.getLogger("wfl_like.cache")

# Part of every key: bump it when what is stored for an item changes meaning.
CACHE_FORMAT = 2


def journal_location(cache, outputs):
    """Where the journal of a call lives, or None when there is none.

    Parameters
    ----------
    cache : bool, str, Path or None
        The ``cache`` option: ``None`` or ``True`` keep a journal beside the first
        output file (none for outputs in memory), ``False`` none, a path keeps it there.
    outputs : OutputSpec or None
    """
    if cache is False:
        return None
    if isinstance(cache, (str, Path)):
        return Path(cache)
    if outputs is not None and outputs.files is not None:
        return journal_path(outputs.paths[0])
    return None


class RunCache:
    """The journal of one call, opened (and locked) for the length of the run.

    Parameters
    ----------
    path : Path
        The journal file.
    call : OpCall
        The operation and its arguments.
    skip_failed : bool
        Part of the call: it decides what a ``None`` output means.
    cache_extra : object, optional
        ``AutoparaInfo(cache_extra=...)``, folded into the key of every item.
    initializer : (callable or None, sequence)
        ``AutoparaInfo(initializer=...)``: its function and arguments count as the op's do.
    rng : numpy.random.Generator, optional
        The call's own generator (spawned once from the caller's): a run with another
        one never counts as "nothing changed".
    overwrite : bool, default False
        Discard the journal unread and start a new one (whatever it holds).
    outputs : OutputSpec, optional
        Where the outputs go: what decides the text of an output kept as file text is part
        of its key, and such a text read back must pick one of these files.
    """

    def __init__(self, path, call, skip_failed, cache_extra=None, rng=None, overwrite=False, initializer=(None, ()),
                 outputs=None):
        # first, so that an argument with no content to hash, or a missing cache_extra
        # file, fails before the journal is opened or anything is computed
        # the initializer sets up what the op computes with (a model it loads): it counts too
        call_part = fingerprint_call(call.op, call.args, call.kwargs, call.iterable_arg, initializer)
        self.call_key = fingerprint(CACHE_FORMAT, call_part, call.iterable_arg, call.per_item_info,
                                    call.inherited_item_info, skip_failed, fingerprint_extra(cache_extra))
        self.journal = Journal(path, fresh=overwrite)
        # a journal that records no run (e.g. created by a call that found foreign outputs
        # and reused them) vouches for nothing: it counts as none
        self.existed = self.journal.meta("call_key") is not None
        self.description = {"op": call.name, "args": [describe(a) for a in call.args],
                            "kwargs": {k: describe(v) for k, v in call.kwargs.items()}}
        self._keys_by_index = call.per_item_info   # an op told its item index depends on it
        self._rng_key = fingerprint(rng)
        self._text_key = _text_fingerprint(outputs)
        to_files = outputs is not None and outputs.files is not None
        self._n_files = len(outputs.paths) if to_files else None
        # decides, as rendering does, which file and inner location a frame's location gives
        self._renderer = outputs.renderer() if to_files else None
        self.reused = self.computed = self.changed = 0
        self._warned_unstorable = False

    def record_of(self, outputs, inputs_fingerprint):
        """What this journal says about the files of ``outputs``, for
        :meth:`~wfl_like.configset.OutputSpec.plan_run`."""
        return JournalRecord(records_a_run=self.existed, wrote_them=self._wrote(outputs),
                             unchanged=self._finished(inputs_fingerprint, outputs))

    def _wrote(self, outputs):
        """Whether the existing files of ``outputs`` are the ones a run of this journal wrote
        (so they are ours to rewrite), as opposed to files of another output that happens
        to share this journal (``cache=PATH``)."""
        if not self.existed or outputs is None or outputs.files is None:
            return False
        recorded = self.journal.meta("outputs")
        if not isinstance(recorded, list):
            return False
        return [entry[0] for entry in recorded if isinstance(entry, list) and entry] == [str(p) for p in outputs.paths]

    def _finished(self, inputs_fingerprint, outputs):
        """Whether a previous run of this very call, on these very inputs and with this very
        generator, completed with no failure, and left the output files as they are now and
        as ``outputs`` would write them."""
        journal = self.journal
        return (self.existed and inputs_fingerprint is not None and journal.meta("complete") is True
                and journal.meta("failed") == 0 and journal.meta("call_key") == self.call_key
                and journal.meta("inputs") == inputs_fingerprint
                and journal.meta("rng") == self._rng_key
                and journal.meta("writer") == writer_fingerprint(outputs)
                and journal.meta("outputs") == _stat_outputs(outputs))

    def start(self):
        """Begin the run, forgetting what another call computed (an ``overwrite`` journal was
        already discarded, unread, when it was opened)."""
        reason = self.journal.start(self.call_key, self.description)
        if reason:
            log.info("%s: recomputing every item: %s since the last run", self.description["op"], reason)

    def key_of(self, index, item, rng):
        """The cache key of input item ``index``: a frame of an input file by its bytes (and
        what decides its output text), any other item by its content."""
        position = index if self._keys_by_index else None
        if isinstance(item, FrameItem):
            return frame_key(self.call_key, item.identity(), rng, position, self._text_key)
        return fingerprint(self.call_key, item, rng, position)

    def lookup(self, index, item, rng):
        """``(key, found, output)`` for one input item, found by its key wherever it was.

        An output kept as file text comes back as the
        :class:`~wfl_like.configset.RenderedOutput` that was recorded, byte for byte, or
        moved to the item's location when it was rendered at another (a frame that moved);
        one that cannot be moved exactly is not found.
        """
        return self.lookup_many(index, [item], [rng])[0]

    def lookup_many(self, first, items, rngs):
        """:meth:`lookup` of consecutive input items ``first, first + 1, ...``, with their
        generators ``rngs``: one query of the journal for all of them."""
        indices = range(first, first + len(items))
        keys = [self.key_of(index, item, rng) for index, item, rng in zip(indices, items, rngs)]
        looked = []
        for item, key, (found, output, changed, rendered_at) in zip(
                items, keys, self.journal.lookup_many(indices, keys, self._n_files)):
            if found and rendered_at is not None and isinstance(item, FrameItem) and rendered_at != item.location:
                output = self._moved(output, rendered_at, item.location)
                found = output is not None
            if found:
                self.reused += 1
            else:
                self.computed += 1
                self.changed += changed
            looked.append((key, found, output))
        return looked

    def _moved(self, output, old_location, new_location):
        """``output`` (a RenderedOutput rendered at ``old_location``) as rendering it at
        ``new_location`` gives it, or None when that cannot be done exactly."""
        if self._renderer is None:
            return None
        return moved_output(output, self._renderer, old_location, new_location)

    def record(self, chunk, done, failed, packed=None):
        """Persist a chunk's finished items (``done``: ``[(index, output)]``, ``failed``:
        FailedItems), or note that its items found in the journal were met again.

        An output given as a :class:`~wfl_like.configset.RenderedOutput` is kept as its
        text, with the location it was rendered at; any other in the codec's data-only format.
        ``packed``: ``{index: stored.Stored}`` of outputs already in their journal form (a worker
        packed them), kept as they are.
        """
        if chunk.keys is None:
            return
        key_of = dict(zip(chunk.indices, chunk.keys))
        failed = [(item.index, key_of[item.index], item) for item in failed]
        if chunk.cached is not None:
            # a reused output that cannot be stored now (a tag that the file cannot hold, a
            # tampered journal) is on record as failed: a rerun computes it again
            failed_indices = {index for index, _, _ in failed}
            self.journal.record(met=[(index, key) for index, key in key_of.items() if index not in failed_indices],
                                failed=failed)
            return
        location_of = dict(zip(chunk.indices, chunk.locations))
        self.journal.record(done=self._encoded(done, key_of, location_of, packed or {}), failed=failed)

    def before_blocking(self, future=None):
        """Commit what the journal holds unless the driver will not block for long: rows are held
        only while results stream in, never while the driver waits for a slow chunk, runs a
        failed one again item by item, or reads slow inputs (``future`` None).

        Parameters
        ----------
        future : concurrent.futures.Future, optional
            The next chunk's: the journal still holds its rows if it is done (and did not
            fail), or finishes within moments.

        Returns
        -------
        bool
            Whether the journal holds nothing now (what was recorded is committed).
        """
        due = self.journal.commit_due(waiting=True)
        if due is None:
            return True
        if future is not None:
            if not future.done() and due > 0:
                concurrent.futures.wait([future], timeout=due)
            if future.done() and not future.cancelled() and future.exception() is None:
                return False
        self.journal.commit()
        return True

    def _encoded(self, done, key_of, location_of, prepacked):
        """``[(index, key, Stored)]`` of the outputs the journal can hold; the others are
        left out (computed again by a rerun), with one warning per call."""
        packed = []
        for index, output in done:
            try:
                form = prepacked.get(index)
                if form is None:
                    form = stored.pack(output)
                packed.append((index, key_of[index], stored.at_location(form, location_of[index] or ())))
            except codec.UnencodableError as exc:
                if not self._warned_unstorable:
                    self._warned_unstorable = True
                    warnings.warn(f"{self.description['op']}: the output of item {index} cannot be kept in the "
                                  f"journal ({exc}); it is stored, but a rerun computes it again (and so any "
                                  f"other such item)", stacklevel=2)
        return packed

    def finish(self, n_items, inputs_fingerprint, n_failed, outputs):
        """Mark the run complete, so an identical rerun can return at once; drop the items
        this run did not meet."""
        self.journal.complete(n_items=n_items, failed=n_failed, inputs=inputs_fingerprint,
                              outputs=_stat_outputs(outputs), writer=writer_fingerprint(outputs),
                              rng=self._rng_key)
        op = self.description["op"]
        if self.reused:
            why = f"; {self.changed} items changed since the last run" if self.changed else ""
            log.info("%s: %d items reused from the journal, %d computed%s", op, self.reused, self.computed, why)

    def close(self):
        self.journal.close()


def writer_fingerprint(outputs):
    """What decides the bytes written besides the outputs themselves: the files and their
    layout, the tags, the write arguments and the ASE version that writes them."""
    if outputs is None:
        return fingerprint(None)
    import ase

    return fingerprint([str(path) for path in outputs.paths], outputs.single_file, outputs.tags,
                       outputs.write_kwargs, ase.__version__, io.codec_identity())


def _text_fingerprint(outputs):
    """What decides the text an output is kept as in the journal (part of a frame's key): the
    outputs' settings, the ASE version and the reader and writer that parse the frame and write
    the text (:func:`wfl_like.io.codec_identity`), not the files' names."""
    import ase

    return fingerprint(outputs.text_settings() if outputs is not None else None, ase.__version__,
                       io.codec_identity())


def input_digests(inputs):
    """``[(absolute path, SHA-256 hex)]`` of the input files by their bytes (not parsed), or None
    for other inputs.  Hashing a file is far faster than parsing it."""
    if not isinstance(inputs, ConfigSet) or not inputs.files():
        return None
    digests = []
    for path in inputs.files():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests.append((str(Path(path).resolve()), digest.hexdigest()))
    return digests


def inputs_fingerprint(inputs, digests=None):
    """A fingerprint of input files by their bytes, or None for other inputs, so that an
    unchanged input is recognised in a fraction of a second.

    ``digests``: what :func:`input_digests` gave for ``inputs``, when it was already asked.
    """
    parts = input_digests(inputs) if digests is None else digests
    if parts is None:
        return None
    return fingerprint(parts, inputs.read_kwargs, inputs.enclosing_location)


def _stat_outputs(outputs):
    """Size and modification time of each output file: an edited or replaced file is not reused."""
    if outputs is None or outputs.files is None:
        return None
    stats = []
    for path in outputs.paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        stats.append([str(path), stat.st_size, stat.st_mtime_ns])
    return stats
