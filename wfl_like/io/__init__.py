"""Reading and writing structures: the one place that calls :mod:`ase.io`.

ASE's ``read``/``iread``/``write`` default to ``parallel=True``, which under MPI
reads on rank 0 and broadcasts; every call here passes ``parallel=False`` so that
each process does its own I/O.
"""

from io import StringIO
from pathlib import Path

from wfl_like.errors import InputFileError
from wfl_like.io.partial import partial_path

__all__ = ["iread", "format_for", "partial_path", "APPENDABLE_FORMATS", "codec_identity"]

# Bump whenever wfl_like's own extended-XYZ reader (fastread) or writer (fastwrite) changes what
# it gives for some input: journals keyed by an older version are then not reused.
IO_VERSION = 1


def codec_identity():
    """What, besides ASE's version, decides how frames are parsed and outputs written here: the
    reader and writer chosen by their environment variables, libextxyz's version and
    :data:`IO_VERSION`.  Part of the journal's keys of frames and of the record of written files.

    Raises
    ------
    ValueError
        ``WFL_LIKE_EXTXYZ_READER`` or ``WFL_LIKE_EXTXYZ_WRITER`` has a bad value (before any work).
    """
    from importlib import metadata

    from wfl_like.io.fastread import reader_mode
    from wfl_like.io.render import extxyz_writer

    try:
        extxyz_version = metadata.version("extxyz")
    except metadata.PackageNotFoundError:
        extxyz_version = None
    return (IO_VERSION, reader_mode(), extxyz_writer(), extxyz_version)


def iread(path, **read_kwargs):
    """Iterate over the structures of one file.

    Parameters
    ----------
    path : str or Path
        File readable by :func:`ase.io.iread`.
    **read_kwargs
        Passed to :func:`ase.io.iread`; ``index`` defaults to ``":"``.

    Yields
    ------
    ase.Atoms

    Raises
    ------
    InputFileError
        The file is missing or cannot be parsed; the message names the file and the
        frame where parsing stopped.
    """
    import ase.io

    path = Path(path)
    kwargs = {"index": ":", **read_kwargs, "parallel": False}
    try:
        if path.stat().st_size == 0:
            # an output that received no structure is written as an empty file
            return
    except FileNotFoundError:
        raise InputFileError(f"input file {str(path)!r} does not exist") from None
    frame_i = 0
    try:
        for atoms in ase.io.iread(path, **kwargs):
            yield atoms
            frame_i += 1
    except Exception as exc:
        # ASE may read ahead (extended XYZ finds every frame before it parses the first),
        # so where it stopped is found again frame by frame
        where, error = _where_broken(path, read_kwargs, frame_i) or (f"frame {frame_i}", exc)
        raise InputFileError(f"could not read {str(path)!r} at {where} ({type(error).__name__}: "
                             f"{_shorten(str(error))}); check that the file is complete and in a format "
                             f"ASE reads") from exc


def _shorten(text, limit=300):
    return text if len(text) <= limit else text[:limit] + "..."


def _where_broken(path, read_kwargs, first):
    """``("frame K (line L)", error)`` for the first frame from ``first`` on that does not
    parse alone, for (extended) XYZ files; None for other formats or when none is found."""
    if _format_of(path, read_kwargs) not in APPENDABLE_FORMATS:
        return None
    import ase.io

    file_format = _format_of(path, read_kwargs)
    with open(path, errors="replace") as handle:
        for frame_i, line_no, text in _xyz_frames(handle):
            if isinstance(text, Exception):
                return f"frame {frame_i} (line {line_no})", text
            if frame_i < first:
                continue
            try:
                ase.io.read(StringIO(text), index=0, format=file_format, parallel=False)
            except Exception as exc:
                return f"frame {frame_i} (line {line_no})", exc
    return None


def _xyz_frames(handle):
    """``(frame, first line number, text)`` of each frame of an (extended) XYZ file, split by its
    atom counts; a frame whose count is unreadable or that the file cuts short gives an
    exception instead of the text, and ends the sequence."""
    line_no, frame_i = 1, 0
    while True:
        header = handle.readline()
        if not header.strip():
            if header and handle.read().strip():
                yield frame_i, line_no, ValueError("a blank line where the number of atoms was expected")
            return
        try:
            n_atoms = int(header.split()[0])
            if n_atoms < 0 or len(header.split()) != 1:
                raise ValueError
        except ValueError:
            yield frame_i, line_no, ValueError(f"expected the number of atoms, found {_shorten(header.strip(), 60)!r}")
            return
        lines = [header]
        for _ in range(n_atoms + 1):
            line = handle.readline()
            if not line:
                yield frame_i, line_no, ValueError(f"the file ends inside this frame of {n_atoms} atoms")
                return
            lines.append(line)
        yield frame_i, line_no, "".join(lines)
        line_no += n_atoms + 2
        frame_i += 1


def _format_of(path, read_kwargs):
    from ase.io.formats import UnknownFileTypeError, filetype

    name = read_kwargs.get("format")
    if name:
        return name
    try:
        return filetype(str(path), read=True)
    except (UnknownFileTypeError, OSError, ValueError):
        return None


# Formats whose files can grow one structure at a time, as outputs are written.
APPENDABLE_FORMATS = ("extxyz", "xyz")


def format_for(path, write_kwargs=None):
    """The ASE format to write output file ``path`` with, checked to be appendable.

    Parameters
    ----------
    path : str or Path
        Final output path; its name decides the format unless ``write_kwargs`` has one.
    write_kwargs : dict, optional
        May hold ``format``.

    Raises
    ------
    IsADirectoryError
        ``path`` is a directory.
    ValueError
        The format is unknown or cannot be written one structure at a time.
    """
    from ase.io.formats import UnknownFileTypeError, filetype

    if Path(path).is_dir():
        raise IsADirectoryError(f"output file {str(path)!r} is an existing directory; name a file")
    name = (write_kwargs or {}).get("format")
    if not name:
        try:
            name = filetype(str(path), read=False)
        except UnknownFileTypeError:
            name = None
    if name not in APPENDABLE_FORMATS:
        raise ValueError(f"output file {str(path)!r}: format {name!r} cannot be written one structure at a "
                         f"time; name the file *.xyz (extended XYZ), or pass write_kwargs={{'format': "
                         f"'extxyz'}}, and convert the returned ConfigSet with ase.io.write afterwards")
    return name
