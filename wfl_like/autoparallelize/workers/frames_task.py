"""A chunk of frames, done where it runs: read the frames, apply the operation, render the outputs.

This runs in the workers (and in the calling process for serial runs).  The driver
sends :class:`~wfl_like.autoparallelize.frame_items.FrameItem` s, byte ranges of
the input files, and receives per item a
:class:`~wfl_like.io.renderer.RenderedOutput` (file outputs), ``None`` (the op gave
none), an :class:`~wfl_like.autoparallelize.frame_items.Unstorable` (an output the
file cannot hold), or the output objects themselves (outputs in memory, or none).
"""

import hashlib
import itertools

from ase import Atoms

from wfl_like.autoparallelize.frame_items import FrameChangedError, FrameReadError, Unstorable, scan_frames
from wfl_like.autoparallelize.resume.stored import packed_in_worker
from wfl_like.autoparallelize.supervisor import one_line_reason
from wfl_like.errors import InputFileError, OpOutputError
from wfl_like.io.fastread import parse_frames
from wfl_like.locations import LOC_KEY, format_location


class FramesCall:
    """An :class:`~wfl_like.autoparallelize.workers.opcall.OpCall` over chunks of frames.

    It stands in for the call wherever one is run (installed once per worker, or sent by
    value to an executor with the call): the renderer travels with it, once per call.

    Parameters
    ----------
    call : OpCall
        The operation and its arguments.
    renderer : wfl_like.io.renderer.OutputRenderer, optional
        For file outputs: outputs come back as text.  ``None``: they come back as objects.
    skip_failed : bool, default True
        Whether ``None`` is a valid output (checked here for file outputs).
    journaled : bool, default False
        A journal is kept: each rendered output comes back as a
        :class:`~wfl_like.autoparallelize.resume.stored.PackedOutput`, its journal form
        (compressed) made here rather than in the driver.
    """

    def __init__(self, call, renderer=None, skip_failed=True, journaled=False):
        self.call = call
        self.renderer = renderer
        self.skip_failed = skip_failed
        self.journaled = journaled

    @property
    def name(self):
        return self.call.name

    def run(self, first, items, rngs):
        """Apply the operation to the frames of one chunk; one result per item (see the module)."""
        outputs = self.call.run(first, read_frames_of(items), rngs)
        if self.renderer is None:
            return outputs
        return [self._rendered(output, item) for output, item in zip(outputs, items)]

    def _rendered(self, output, item):
        try:
            check_output(output, self.name, self.skip_failed, self.renderer.paths)
            if output is None:
                return None
            rendered = self.renderer.render(output, item.location)
            return packed_in_worker(rendered) if self.journaled else rendered
        except OpOutputError as exc:
            # OutputFormatError among them: the record names the item, the reason keeps the type
            return Unstorable(one_line_reason(exc), exc)


def check_output(output, name, skip_failed, where):
    """Refuse (OpOutputError) an item's output that cannot be stored.

    Parameters
    ----------
    output : object
        What the operation returned for the item.
    name : str
        The operation, for messages.
    skip_failed : bool
        Whether ``None`` is allowed.
    where : list of str, str or None
        The output paths, or a description of where outputs go; ``None`` when they are not
        stored (``outputs=None`` takes any value).
    """
    if output is None:
        if not skip_failed:
            raise OpOutputError(f"operation {name} returned None and skip_failed is False")
        return
    if where is not None and not _is_atoms_tree(output):
        raise OpOutputError(f"operation {name} returned a {type(output).__name__}; only Atoms (or nested lists "
                            f"of Atoms) can be stored in {where} (outputs=None takes any value)")


def _is_atoms_tree(value):
    if isinstance(value, Atoms):
        return True
    return isinstance(value, (list, tuple)) and all(item is None or _is_atoms_tree(item) for item in value)


def read_frames_of(items):
    """The structures of ``items`` (FrameItems), each with its location in ``info`` as a ConfigSet
    iteration gives it.  Consecutive frames of one file are read as one byte range.

    Raises
    ------
    FrameReadError
        A frame does not parse; the message names the file, the frame and its line.
    """
    structures = []
    for run in _contiguous_runs(items):
        frames = _read_run(run)
        for item, atoms in zip(run, frames):
            atoms.info[LOC_KEY] = format_location(item.location)
        structures.extend(frames)
    return structures


def _contiguous_runs(items):
    run = []
    for item in items:
        if run and (item.path != run[-1].path or item.start != run[-1].end):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _read_run(run):
    """The structures of consecutive frames of one file."""
    path, start, end = run[0].path, run[0].start, run[-1].end
    try:
        data = _read_bytes(path, start, end)
        _check_unchanged(run, data)
        frames = parse_frames(data, source=path)
        if len(frames) != len(run):
            raise ValueError(f"{len(frames)} structures where {len(run)} frames were expected")
        return frames
    except FrameChangedError:
        raise
    except OSError as exc:
        raise FrameReadError(f"could not read input file {path!r}: {exc.strerror or exc}; it was readable "
                             f"when the run started") from None
    except Exception as exc:
        raise _broken_frame(run, exc) from None


def _check_unchanged(run, data):
    """Refuse frames whose bytes are not those the driver hashed for their keys.

    An input rewritten in place while the run goes on would otherwise be computed from its
    new bytes and journaled under the old ones' key: a later run on the old file would reuse
    outputs of other data.
    """
    if run[0].digest is None:
        return          # no journal: nothing is kept under a key
    base = run[0].start
    for item in run:
        digest = hashlib.blake2b(data[item.start - base:item.end - base], digest_size=32).digest()
        if digest != item.digest:
            raise FrameChangedError(f"input file {item.path!r} changed while the run was going on (the frame at "
                                    f"bytes {item.start}..{item.end} is not what was read when the run started); "
                                    f"rerun once the file is no longer being written")


def _read_bytes(path, start, end):
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    if len(data) != end - start:
        raise OSError(f"the file is shorter than when the run started ({start + len(data)} bytes, not {end})")
    return data


def _broken_frame(run, first_error):
    """The FrameReadError of the first frame of ``run`` that does not parse alone, named by its
    frame number and line in the file (found again here: errors only)."""
    item, error = run[0], first_error
    if len(run) > 1:
        for candidate in run:
            try:
                parse_frames(_read_bytes(candidate.path, candidate.start, candidate.end), source=candidate.path)
            except Exception as exc:
                item, error = candidate, exc
                break
    frame_i, line = _frame_and_line(item)
    try:
        parse_frames(_read_bytes(item.path, item.start, item.end), source=item.path, first_frame=frame_i,
                     first_line=line)
    except InputFileError as exc:
        return FrameReadError(str(exc))
    except Exception as exc:
        error = exc
    text = str(error)
    if len(text) > 300:
        text = text[:300] + "..."
    return FrameReadError(f"could not read {item.path!r} at frame {frame_i} (line {line}) "
                          f"({type(error).__name__}: {text}); check that the file is complete and in a format "
                          f"ASE reads")


def _frame_and_line(item):
    """The frame number and the first line (from 1) of the frame at ``item.start``."""
    import mmap

    with open(item.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        line = data[:item.start].count(b"\n") + 1
        try:
            offsets = scan_frames(data, item.path).offsets
        except InputFileError:
            offsets = []        # changed since the driver indexed it: the line still says where
    frame_i = next((i for i, offset in zip(itertools.count(), offsets) if offset >= item.start), len(offsets))
    return frame_i, line
