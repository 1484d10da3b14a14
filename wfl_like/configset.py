"""Collections of structures to read (:class:`ConfigSet`) and to write (:class:`OutputSpec`).

Both keep the nesting of their contents: a structure's place is its *location*
(see :mod:`wfl_like.locations`), so that outputs of an operation keep the shape of
its inputs, file for file and group for group.
"""

import collections
import glob
import itertools
import logging
import os
from pathlib import Path
from typing import NamedTuple

from ase import Atoms

from wfl_like import io
from wfl_like.errors import InputFileError
from wfl_like.io import ownership
from wfl_like.io.partial import PartialFile
# RenderedOutput keeps its name here too: it is what OutputSpec.render gives
from wfl_like.io.renderer import OutputRenderer, RenderedOutput, nested_structures  # noqa: F401
from wfl_like.locations import _SEP as LOC_SEP
from wfl_like.locations import (LOC_KEY, SparseList, format_location, iter_tree, location_of, parse_location,
                                place_in_tree, present, tree_from_pairs)
from wfl_like.stopping import check_stop, stop_requested

log = logging.getLogger(__name__)

# What a ConfigSet holds: nothing, a nested list of Atoms, one file, or several files.
_EMPTY, _TREE, _FILE, _FILES = "empty", "tree", "file", "files"


class ConfigSet:
    """A collection of structures, in memory or in files, iterated as a flat sequence.

    Iteration yields ``ase.Atoms`` with their location in the nesting stored in
    ``info["_ConfigSet_loc"]`` (wfl's ``" / i / j"`` form) and in :attr:`cur_loc`.

    Parameters
    ----------
    items : Atoms, (nested) list of Atoms, str, Path, list of str/Path, ConfigSet or list of ConfigSet
        - ``Atoms`` or a (nested) list of ``Atoms``: kept in memory; the nesting is that
          of the lists.
        - a file name: the structures of that file; locations stored in the file
          (written by :class:`OutputSpec`) give its nesting, else one level.
        - a glob or a list of file names/globs: one top-level group per file, in the
          order given, each glob's matches sorted.
        - ``ConfigSet`` or a list of them: concatenated (all file-based, or all in
          memory, one group each).
    file_root : str or Path, optional
        Directory that relative file names are taken from.
    read_kwargs : dict, optional
        Extra keyword arguments for :func:`ase.io.iread`, e.g. ``{"index": "::2"}``.

    Attributes
    ----------
    failures : list of wfl_like.errors.FailedItem
        For a set returned by an autoparallelized operation run with ``errors="skip"``:
        the input items that failed and why (empty otherwise).

    Raises
    ------
    FileNotFoundError
        A file name or glob matches no file.
    ValueError
        ``file_root`` given with an absolute path, or a list mixing files and structures.
    """

    # wfl's name for the separator of the levels in a location string (" / 2 / 0")
    _loc_sep = LOC_SEP

    def __init__(self, items, *, file_root=None, read_kwargs=None):
        if read_kwargs is None and isinstance(items, ConfigSet):
            read_kwargs = items.read_kwargs
        self.read_kwargs = dict(read_kwargs or {})
        self._enclosing = ()
        self._cur_loc = None
        self.failures = []
        root = Path(file_root) if file_root is not None else None
        self._kind, self._content = _classify(items, root)

    @classmethod
    def _make(cls, kind, content, enclosing, read_kwargs):
        cs = cls.__new__(cls)
        cs._kind, cs._content, cs._enclosing = kind, content, enclosing
        cs.read_kwargs = read_kwargs
        cs._cur_loc = None
        cs.failures = []
        return cs

    @property
    def cur_loc(self):
        """Location string of the structure the iteration returned last, or ``None``."""
        return self._cur_loc

    @property
    def _enclosing_loc(self):
        # wfl's name: this set's location inside the set that produced it by groups()
        return format_location(self._enclosing)

    @property
    def enclosing_location(self):
        """This set's location (a tuple) inside the set whose :meth:`groups` gave it; ``()`` for a
        set made directly."""
        return self._enclosing

    def located(self):
        """Iterate over ``(location, Atoms)`` pairs, locations as tuples relative to this set.

        Unlike iteration, nothing is written into the structures' ``info``.
        """
        return self._located()

    def __iter__(self):
        for loc, atoms in self._located():
            self._cur_loc = atoms.info[LOC_KEY] = format_location(loc)
            yield atoms
        self._cur_loc = None

    def _located(self):
        """Yield ``(location, Atoms)`` pairs, locations relative to this set."""
        if self._kind == _TREE:
            yield from iter_tree(self._content)
        elif self._kind == _FILE:
            yield from _located_in_file(self._content, self.read_kwargs)
        elif self._kind == _FILES:
            for file_i, path in enumerate(self._content):
                for loc, atoms in _located_in_file(path, self.read_kwargs):
                    yield (file_i,) + loc, atoms

    def groups(self):
        """Iterate over the top level of the nesting.

        Yields
        ------
        Atoms or ConfigSet
            An ``Atoms`` for a structure at the top level, a ``ConfigSet`` for each
            sub-list or file.  Each yielded ``ConfigSet`` is independent, so they may be
            used in any order, or kept and used later.
        """
        if self._kind == _TREE:
            for i, item in present(self._content):
                if isinstance(item, Atoms):
                    item.info.pop(LOC_KEY, None)
                    yield item
                else:
                    yield self._child(_TREE, item, i)
        elif self._kind == _FILES:
            for i, path in enumerate(self._content):
                yield self._child(_FILE, path, i)
        elif self._kind == _FILE:
            pairs = _located_in_file(self._content, self.read_kwargs)
            for top, group in itertools.groupby(pairs, key=lambda pair: pair[0][0]):
                group = list(group)
                if len(group) == 1 and len(group[0][0]) == 1:
                    atoms = group[0][1]
                    atoms.info.pop(LOC_KEY, None)
                    yield atoms
                else:
                    # A group of one file is read once, here, and kept in memory, so the
                    # yielded sets stay valid whatever order the caller uses them in.
                    yield self._child(_TREE, tree_from_pairs((loc[1:], at) for loc, at in group), top)

    def _child(self, kind, content, index):
        return ConfigSet._make(kind, content, self._enclosing + (index,), self.read_kwargs)

    def one_file(self):
        """The path of the one file this set reads, or ``False`` if it is not exactly one file."""
        if self._kind == _FILE:
            return self._content
        if self._kind == _FILES and len(self._content) == 1:
            return self._content[0]
        return False

    def files(self):
        """The paths this set reads (empty for structures in memory)."""
        if self._kind == _FILE:
            return [self._content]
        if self._kind == _FILES:
            return list(self._content)
        return []

    def frame_files(self):
        """The extended-XYZ files of this set, for a reader that takes their frames by byte offset.

        Returns
        -------
        FrameFiles or None
            The files, whether locations start with the file's number, and the frame
            selection (``read_kwargs["index"]``); ``None`` when this set is read some other
            way: structures in memory, another format (compressed files included), or
            ``read_kwargs`` other than ``index`` and ``format``.
        """
        if self._kind not in (_FILE, _FILES):
            return None
        if set(self.read_kwargs) - {"index", "format"}:
            return None
        index = _frame_selection(self.read_kwargs.get("index"))
        if index is None:
            return None
        paths = self.files()
        if not all(_reads_as_extxyz(path, self.read_kwargs.get("format")) for path in paths):
            return None
        return FrameFiles(paths, self._kind == _FILES, index)

    def __add__(self, other):
        if not isinstance(other, ConfigSet):
            return NotImplemented
        return ConfigSet([self, other])

    def __repr__(self):
        if self._kind == _FILE:
            return f"ConfigSet(file {str(self._content)!r})"
        if self._kind == _FILES:
            return f"ConfigSet({len(self._content)} files)"
        if self._kind == _TREE:
            return f"ConfigSet({len(self._content)} items in memory)"
        return "ConfigSet(empty)"

    __str__ = __repr__


class FrameFiles(NamedTuple):
    """What :meth:`ConfigSet.frame_files` gives: how a set of extended-XYZ files is iterated.

    Attributes
    ----------
    paths : list of Path
        The files, in iteration order.
    numbered : bool
        Locations start with the file's number (a set of several files, or of a glob).
    index : slice
        The frames read from each file: ``read_kwargs["index"]`` as :func:`ase.io.iread`
        takes it (an int ``i`` is ``slice(i, i + 1)``).
    """

    paths: list
    numbered: bool
    index: object


# Compressed files are decompressed by ASE: their bytes are not the frames' text.
_COMPRESSED = (".gz", ".bz2", ".xz", ".lzma")


def _frame_selection(index):
    """``read_kwargs["index"]`` as the slice ASE's reader iterates over, or None when ASE would
    take it otherwise (or refuse it: the error is then ASE's own)."""
    from ase.io.formats import string2index

    if index is None:
        return slice(None)
    if isinstance(index, str):
        try:
            index = string2index(index)
        except ValueError:
            return None
    if isinstance(index, int) and not isinstance(index, bool):
        return slice(index, (index + 1) or None)
    return index if isinstance(index, slice) else None


def _reads_as_extxyz(path, file_format):
    """Whether ASE reads ``path`` with its extended-XYZ reader."""
    if Path(path).suffix.lower() in _COMPRESSED:
        return False
    if file_format:
        return file_format == "extxyz"
    from ase.io.formats import UnknownFileTypeError, filetype

    try:
        return filetype(str(path), read=True) == "extxyz"
    except (UnknownFileTypeError, OSError, ValueError):
        return False


def _classify(items, root):
    """Decide what a ConfigSet holds: returns ``(kind, content)``."""
    if items is None:
        return _EMPTY, None
    if isinstance(items, ConfigSet):
        # a copy; a list of ConfigSets (below) makes one group per set or file, as in wfl
        return items._kind, (list(items._content) if isinstance(items._content, list) else items._content)
    if isinstance(items, Atoms):
        return _TREE, [items]
    if isinstance(items, (str, Path)):
        paths = _expand(items, root)
        if len(paths) == 1 and paths[0] == _full_path(items, root):
            # a file name, not a glob (even one that matches a single file)
            return _FILE, paths[0]
        return _FILES, paths
    if isinstance(items, OutputSpec):
        raise TypeError("ConfigSet(OutputSpec) is not supported: use OutputSpec.to_ConfigSet()")
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"ConfigSet items must be Atoms, a (nested) list of Atoms, file names or "
                        f"ConfigSets, not {type(items).__name__}") from None
    if not items:
        return _EMPTY, None
    if all(isinstance(item, (str, Path)) for item in items):
        return _FILES, [path for item in items for path in _expand(item, root)]
    if all(isinstance(item, ConfigSet) for item in items):
        return _merge(items)
    if any(isinstance(item, (str, Path, ConfigSet)) for item in items):
        raise ValueError("ConfigSet items mix file names or ConfigSets with structures; "
                         "give one kind, or combine ConfigSets with +")
    return _TREE, items


def _expand(pattern, root):
    """Paths matching a file name or glob, sorted; an error if there are none."""
    if root is not None and Path(pattern).is_absolute():
        raise ValueError(f"file_root {str(root)!r} was given but file {str(pattern)!r} is an absolute path")
    full = _full_path(pattern, root)
    if full.exists():
        # an existing file is taken as it is named, even if its name has [ ] * or ?
        return [full]
    if not glob.has_magic(str(pattern)):
        raise FileNotFoundError(f"input file {str(full)!r} does not exist")
    if root is not None:
        # the root is a directory name, never a pattern
        paths = [root / p for p in sorted(glob.glob(str(pattern), root_dir=root, recursive=True))]
    else:
        paths = [Path(p) for p in sorted(glob.glob(str(pattern), recursive=True))]
    if not paths:
        raise FileNotFoundError(f"input glob {str(full)!r} matches no file")
    return paths


def _full_path(pattern, root):
    return (root / pattern) if root is not None else Path(pattern)


def _merge(configsets):
    """Concatenate ConfigSets: all file-based, or all in memory (one group each)."""
    parts = [cs for cs in configsets if cs._kind != _EMPTY]
    if not parts:
        return _EMPTY, None
    if all(cs._kind in (_FILE, _FILES) for cs in parts):
        return _FILES, [path for cs in parts for path in cs.files()]
    if any(cs._kind in (_FILE, _FILES) for cs in parts):
        raise ValueError("cannot combine a ConfigSet of files with one of structures in memory; "
                         "write the structures to a file first, or read the files into memory")
    return _TREE, [cs._content for cs in parts]


def _located_in_file(path, read_kwargs):
    """``(location, Atoms)`` for each structure of a file: the stored location, else the frame number."""
    for frame_i, atoms in enumerate(io.iread(path, **read_kwargs)):
        try:
            loc = location_of(atoms)
        except ValueError as exc:
            raise InputFileError(f"input file {str(path)!r}, structure {frame_i}: {exc}; fix or remove that "
                                 f"info entry (it is written by OutputSpec to keep the nesting)") from None
        yield (loc if loc else (frame_i,)), atoms


class MixedLocationsError(ValueError, RuntimeError):
    """Stores into one OutputSpec with a location after ones without, or the reverse.

    A ValueError (a bad argument) that is also the RuntimeError wfl raises here, so that
    code written for either catches it.
    """


class OutputSpec:
    """Where the outputs of an operation go: memory, one file, or several files.

    Files are written under a hidden temporary name beside the final one and renamed
    into place by :meth:`close`, so a file at an output path is always complete.  The
    temporary file is locked from the first store (or, under
    :func:`~wfl_like.autoparallelize.autoparallelize`, from the start of the run) until it
    is published, so a second writer of the same output fails at once with
    :class:`~wfl_like.errors.OutputLockedError`.  Every structure is rendered and checked
    to read back before it is written: one the file cannot hold raises
    :class:`~wfl_like.errors.OutputFormatError` naming the key.

    Parameters
    ----------
    files : str, Path, list of str/Path, optional
        ``None`` keeps outputs in memory.  One file receives all outputs, with their
        locations stored so the nesting survives.  With several files, the first level
        of an output's location picks the file (inputs from N files go to N outputs).
    file_root : str or Path, optional
        Directory that relative file names are taken from.
    overwrite : bool, default False
        Replace existing output files.  With ``False``, an operation run through
        :func:`~wfl_like.autoparallelize.autoparallelize` whose output files all exist
        returns them instead of running again.
    flush : bool, default True
        Flush the file after every structure written.
    write_kwargs : dict, optional
        Extra keyword arguments for :func:`ase.io.write` (``format`` among them).
    tags : dict, optional
        ``info`` entries set on every stored structure.
    """

    def __init__(self, files=None, *, file_root=None, overwrite=False, flush=True, write_kwargs=None,
                 tags=None):
        self.file_root = Path(file_root) if file_root is not None else Path("")
        self.overwrite = overwrite
        self.flush = flush
        self.write_kwargs = dict(write_kwargs or {})
        self.tags = dict(tags or {})
        self.closed = False
        self._next_index = None    # counter for stores that give no location
        self._stored_any = False
        if files is None:
            self.files = None
            self.single_file = False
            self.configs = SparseList()
        else:
            self.single_file = isinstance(files, (str, Path))
            self.files = [Path(f) for f in ([files] if self.single_file else files)]
            if not self.files:
                raise ValueError("OutputSpec files is an empty list; pass None to keep outputs in memory")
            absolute = [str(f) for f in self.files if f.is_absolute()]
            if absolute and file_root is not None:
                raise ValueError(f"file_root {str(file_root)!r} was given but output files {absolute} are "
                                 f"absolute paths")
            self.configs = None
            resolved = collections.Counter(p.resolve() for p in self.paths)
            repeated = sorted(str(p) for p in self.paths if resolved[p.resolve()] > 1)
            if repeated:
                raise ValueError(f"OutputSpec files name the same file more than once: {repeated}")
        self._partials = None      # the locked partial files, once claimed
        self.n_stored = 0          # structures stored so far
        # Bad names fail here, before any work; the format is looked up once per file
        # (ASE matches a name against every format it knows).
        self._file_write_kwargs = [{**self.write_kwargs, "format": io.format_for(path, self.write_kwargs)}
                                   for path in self.paths]

    @property
    def paths(self):
        """Final paths of the output files (empty list for outputs in memory)."""
        return [self.file_root / f for f in self.files] if self.files is not None else []

    @property
    def published(self):
        """Final paths that :meth:`close` moved into place (complete files) so far."""
        return [partial.final for partial in self._partials or () if partial.published]

    def all_written(self):
        """Whether every output file exists, i.e. a previous run completed.

        Files reach their final path only when complete, so existence means done.
        Always ``False`` for outputs in memory.
        """
        return self.files is not None and all(p.exists() for p in self.paths)

    def text_settings(self):
        """What decides the text an output adds to its file, besides the output and its location.

        Not the file names themselves: the same settings write the same text into any file.

        Returns
        -------
        tuple
            ``(single_file, tags, write arguments of each file, format included)``; ``None``
            for outputs in memory.
        """
        if self.files is None:
            return None
        return self.single_file, dict(self.tags), [dict(kwargs) for kwargs in self._file_write_kwargs]

    def plan_run(self, record=None):
        """Whether a run reuses these outputs as they are, or writes them: the one place that decides.

        Parameters
        ----------
        record : wfl_like.io.ownership.JournalRecord, optional
            What the run's journal says about the files; None when it keeps no journal.

        Returns
        -------
        wfl_like.io.ownership.Plan
            ``plan.reuse`` says why the existing files are returned as they are (None: they
            are written); ``plan.replace_existing`` is for :meth:`claim`.
        """
        return ownership.plan_run(self.files is not None, self.overwrite, self.all_written(), record)

    def claim(self, replace_existing=False):
        """Make sure these files may be written, and hold them for this writer until :meth:`close`.

        Called by :func:`~wfl_like.autoparallelize.autoparallelize` before any work, and by
        the first :meth:`store` otherwise; once claimed, later calls do nothing.

        Parameters
        ----------
        replace_existing : bool, default False
            Existing output files may be replaced even though ``overwrite`` is False (a
            run whose journal describes them).

        Raises
        ------
        FileExistsError
            An output file exists, and neither ``overwrite`` nor ``replace_existing`` is set.
        PermissionError
            An output directory cannot be created or written.
        OutputLockedError
            Another writer, in this process or another, holds an output.
        """
        if self.files is None or self._partials is not None:
            return
        if self.closed:
            raise ValueError("cannot write into an OutputSpec after close()")
        if not (self.overwrite or replace_existing):
            existing = [str(p) for p in self.paths if p.exists()]
            if existing:
                raise FileExistsError(f"output file(s) {existing} already exist and overwrite is False; pass "
                                      f"OutputSpec(..., overwrite=True) to replace them, or remove them")
        for path in self.paths:
            _check_directory(path.parent)
        partials = []
        try:
            for path in self.paths:
                partials.append(PartialFile(path))
        except BaseException:
            for partial in partials:
                partial.discard()
            raise
        self._partials = partials

    def store(self, configs, input_CS_loc=""):
        """Store one output (an ``Atoms`` or a nested list of them) at a location.

        Parameters
        ----------
        configs : Atoms, (nested) list of Atoms, or None
            ``None`` stores nothing.  A list is stored one level below ``input_CS_loc``.
        input_CS_loc : str or tuple, default ""
            Location of the input this output came from (``info["_ConfigSet_loc"]`` of
            the input, or :attr:`ConfigSet.cur_loc`).  Required with several files;
            without it, outputs are placed one after the other.

        Raises
        ------
        OutputFormatError
            For file outputs: the format cannot hold a structure, or it would not read
            back (the message names the key); nothing of ``configs`` is written.
        OutputWriteError
            The file cannot be written (disk full, ...).
        """
        # under stop_on_signals, nothing more is stored once a stop was asked for, even
        # if the exception the signal raised was lost on its way
        check_stop()
        if self.closed:
            raise ValueError("cannot store into an OutputSpec after close()")
        if configs is None:
            return
        if self.files is None:
            self._keep(configs, parse_location(input_CS_loc))
            return
        self.claim()
        self.store_rendered(self.render(configs, input_CS_loc))

    def store_many(self, outputs):
        """Store several outputs, each at its input's location: :meth:`store` of each in turn.

        Parameters
        ----------
        outputs : iterable of (configs, input_CS_loc)
            As :meth:`store` takes them; ``None`` outputs store nothing.

        Raises
        ------
        OutputFormatError, OutputWriteError
            As :meth:`store`; the outputs before the one that failed are stored.
        """
        if self.files is not None:
            for configs, input_CS_loc in outputs:
                self.store(configs, input_CS_loc)
            return
        # outputs in memory: asked of every item of every run, so the checks that hold for
        # the whole batch are made once
        check_stop()
        if self.closed:
            raise ValueError("cannot store into an OutputSpec after close()")
        # single structures without a location and without tags (the common case) are put
        # after the others in one go; any other output is kept as store() keeps it, in turn
        following = []
        for configs, input_CS_loc in outputs:
            if configs is None:
                continue
            if not input_CS_loc and type(configs) is Atoms and not self.tags:
                following.append(configs)
                continue
            self._append(following)
            following = []
            self._keep(configs, parse_location(input_CS_loc))
        self._append(following)

    def _append(self, structures):
        """Keep single structures, without locations or tags, after the others."""
        if structures:
            self._take_location(())
            self.configs.extend(structures)
            self.n_stored += len(structures)

    def _keep(self, configs, loc):
        """Keep an output in memory at ``loc`` (a tuple; empty: after the others)."""
        loc = self._take_location(loc)
        if self.tags:
            self._tag(configs)
        if loc:
            place_in_tree(self.configs, loc, configs)
        else:
            self.configs.append(configs)
        self.n_stored += 1 if type(configs) is Atoms else sum(1 for _ in nested_structures(configs))

    def render(self, configs, input_CS_loc=""):
        """The text that storing ``configs`` would write, checked to read back; nothing is written.

        For file outputs only.  The location is taken (outputs stored without one are
        numbered) only when the rendering succeeds.

        Returns
        -------
        RenderedOutput
            For :meth:`store_rendered`.

        Raises
        ------
        OutputFormatError
            The format cannot hold a structure of ``configs``, or it would not read back.
        ValueError
            The location is not valid for these files.
        """
        if self.files is None:
            raise ValueError("render() is for outputs to files; store() keeps outputs in memory")
        loc, next_index = self._resolve_location(parse_location(input_CS_loc))
        rendered = self.renderer().render(configs, loc)
        self._next_index, self._stored_any = next_index, True
        return rendered

    def renderer(self):
        """An :class:`~wfl_like.io.renderer.OutputRenderer` for these files: what rendering an output
        needs (file layout, write arguments, tags), picklable, to render in another process.

        Its ``render(configs, loc)`` takes the input's location as a tuple, resolved: outputs
        without a location are numbered by :meth:`render` only.
        """
        if self.files is None:
            raise ValueError("renderer() is for outputs to files; outputs in memory are stored as they are")
        return OutputRenderer(self.paths, self.single_file, self._file_write_kwargs, self.tags)

    def store_rendered(self, rendered):
        """Write what :meth:`render` gave (the files must be claimed: :meth:`claim`)."""
        check_stop()
        if self.closed:
            raise ValueError("cannot store into an OutputSpec after close()")
        self._partials[rendered.file_i].write(rendered.text, self.flush)
        self.n_stored += rendered.count

    def _take_location(self, loc):
        loc, self._next_index = self._resolve_location(loc)
        self._stored_any = True
        return loc

    def _resolve_location(self, loc):
        """``(location, next counter)``; nothing changes until the caller commits the counter.

        Like wfl: outputs stored without location are numbered one after the other, and a
        store without location may not follow one with a location or vice versa.
        """
        if loc:
            if self._next_index is not None:
                raise MixedLocationsError("store() got a location after calls without one: give every "
                                          "store() of this OutputSpec a location, or none")
            return loc, None
        if self.files is None:
            return (), self._next_index
        if self._stored_any and self._next_index is None:
            raise MixedLocationsError("store() got no location after calls that gave one: give every "
                                      "store() of this OutputSpec a location, or none")
        next_index = 0 if self._next_index is None else self._next_index + 1
        return ((next_index,) if self.single_file else ()), next_index

    def _tag(self, configs):
        if isinstance(configs, Atoms):
            configs.info.update(self.tags)
        elif configs is not None:
            for item in configs:
                self._tag(item)

    def close(self):
        """Finish writing: every output file is moved to its final path.

        A file that received no structure is created empty, so that
        :meth:`all_written` knows the run completed; but with ``overwrite=False``, when
        nothing was stored and output files exist (a first :meth:`store` refused them
        with ``FileExistsError``), the existing files are left as they are.  If publishing fails or is
        interrupted, the partial files not yet published are removed.

        Raises
        ------
        OutputWriteError
            A file could not be published (disk full, its partial file removed, ...).
        """
        if self.closed:
            return
        if stop_requested():
            self.discard()
            check_stop()
        if self.files is None:
            self.closed = True
            return
        if self._partials is None and not self.overwrite and any(p.exists() for p in self.paths):
            # Nothing was stored (a first store refused the existing files, as wfl's does,
            # or none was tried): those files stay as they are, and closing is no error.
            self.closed = True
            return
        self.claim()
        try:
            for partial in self._partials:
                partial.publish()
        except BaseException:
            self.discard()
            raise
        self.closed = True

    def discard(self):
        """Abandon the output: remove the partial files not yet published (final paths are untouched)."""
        self.closed = True
        for partial in self._partials or ():
            partial.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def write(self, configs):
        """Store every structure of ``configs`` at its own location, then close.

        Parameters
        ----------
        configs : iterable of Atoms
            Usually a ConfigSet; each structure's ``info["_ConfigSet_loc"]`` is kept.
        """
        if self.plan_run().reuse is not None:
            log.info("reusing existing output %s: all files exist and overwrite is False",
                     [str(p) for p in self.paths])
            # nothing to write: done, as after the close() that write() otherwise does
            self.closed = True
            return
        with self:
            for atoms in configs:
                self.store(atoms, atoms.info.get(LOC_KEY, ""))

    def to_ConfigSet(self):
        """A ConfigSet over what was stored (the files, or the structures in memory)."""
        if self.files is None:
            return ConfigSet._make(_TREE, self.configs, (), {})
        # files named with an extension ASE does not know are read in the format written
        read_kwargs = {"format": self.write_kwargs["format"]} if self.write_kwargs.get("format") else {}
        if self.single_file:
            return ConfigSet._make(_FILE, self.paths[0], (), read_kwargs)
        return ConfigSet._make(_FILES, self.paths, (), read_kwargs)

    def __repr__(self):
        where = "memory" if self.files is None else [str(p) for p in self.paths]
        return f"OutputSpec({where})"


def _check_directory(directory):
    """Create an output directory, and refuse one that cannot be written, before any work."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create output directory {str(directory)!r}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {str(directory)!r} is not writable")
