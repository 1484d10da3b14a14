"""Turning an operation's output into the text its output file receives, in any process.

:class:`OutputRenderer` holds what rendering needs and nothing else (the layout of the
files, their write arguments, the tags), so that it pickles small and the workers can
render their outputs themselves: the driver then only writes the text.
:class:`~wfl_like.configset.OutputSpec` renders through the same class
(:meth:`~wfl_like.configset.OutputSpec.renderer`), so there is one way outputs become text.
"""

from typing import NamedTuple

from ase import Atoms

from wfl_like.errors import OutputFormatError
from wfl_like.io.render import UnwritableOutput, render
from wfl_like.locations import LOC_KEY, format_location


class RenderedOutput(NamedTuple):
    """One output as the text it adds to its file.

    Attributes
    ----------
    file_i : int
        Which output file (0 for a single file).
    text : str
        The extended-XYZ text of its structures, with their locations and the tags.
    count : int
        How many structures the text holds.
    """

    file_i: int
    text: str
    count: int


class OutputRenderer:
    """Renders outputs for the files of one OutputSpec; picklable.

    Parameters
    ----------
    paths : list of str
        The final output paths, for messages (and their number, for locations).
    single_file : bool
        One file that receives every output with its whole location; otherwise the
        first level of a location picks the file.
    file_write_kwargs : list of dict
        Per file, the keyword arguments of the writer (``format`` among them).
    tags : dict
        ``info`` entries set on every structure written.
    """

    def __init__(self, paths, single_file, file_write_kwargs, tags):
        self.paths = [str(path) for path in paths]
        self.single_file = single_file
        self.file_write_kwargs = [dict(kwargs) for kwargs in file_write_kwargs]
        self.tags = dict(tags)

    def render(self, configs, loc: tuple) -> RenderedOutput:
        """The text of one output (an Atoms or a nested list of them) from the input at ``loc``.

        Nothing of ``configs`` is changed.

        Parameters
        ----------
        configs : Atoms or (nested) list of Atoms
        loc : tuple of int
            The input's location, already resolved (never empty with several files).

        Raises
        ------
        OutputFormatError
            The format cannot hold a structure of ``configs``, or it would not read back.
        ValueError
            The location does not pick one of the files.
        """
        file_i, stored_loc = self.file_of(loc)
        texts = [self._render_one(atoms, sub_loc, file_i) for sub_loc, atoms in nested_structures(configs, stored_loc)]
        return RenderedOutput(file_i, "".join(texts), len(texts))

    def file_of(self, loc):
        """``(file_i, location inside that file)`` of an output from the input at ``loc``.

        Raises
        ------
        ValueError
            Several files and an empty location, or one that picks a file past the last.
        """
        if self.single_file:
            return 0, loc
        if not loc:
            raise ValueError("OutputSpec with several files needs input_CS_loc in store(): its first "
                             "level picks the file")
        if loc[0] >= len(self.paths):
            raise ValueError(f"location {format_location(loc)!r} picks output file {loc[0]}, but only "
                             f"{len(self.paths)} files were given: {self.paths}")
        return loc[0], loc[1:]

    def _render_one(self, atoms, loc, file_i):
        # rendered with its location and the tags, leaving the caller's structure as it was
        saved = atoms.info
        info = dict(saved)
        if loc:
            info[LOC_KEY] = format_location(loc)
        else:
            # at the top of its file: a location left from the input must not be written
            info.pop(LOC_KEY, None)
        info.update(self.tags)
        atoms.info = info
        try:
            return render(atoms, self.file_write_kwargs[file_i])
        except UnwritableOutput as exc:
            raise OutputFormatError(f"output at {format_location(loc)!r} of {self.paths[file_i]!r} "
                                    f"cannot be written: {exc}") from None
        finally:
            atoms.info = saved


def nested_structures(configs, loc=()):
    """``(location, Atoms)`` for an output that is an Atoms or a nested list of them (``None`` entries
    passed over, keeping the positions of the others)."""
    if isinstance(configs, Atoms):
        yield loc, configs
        return
    for i, item in enumerate(configs):
        if item is not None:
            yield from nested_structures(item, loc + (i,))
