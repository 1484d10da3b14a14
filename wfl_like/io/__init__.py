"""Reading and writing structures: the one place that calls :mod:`ase.io`.

ASE's ``read``/``iread``/``write`` default to ``parallel=True``, which under MPI
reads on rank 0 and broadcasts; every call here passes ``parallel=False`` so that
each process does its own I/O.
"""

import os
from pathlib import Path

from wfl_like.errors import InputFileError


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
        raise InputFileError(f"could not read {str(path)!r} at frame {frame_i} "
                             f"({type(exc).__name__}: {exc}); check that the file is complete "
                             f"and in a format ASE reads") from exc


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


def write(fileobj, atoms, **write_kwargs):
    """Write one structure (or a list) to an open file object."""
    import ase.io

    ase.io.write(fileobj, atoms, **write_kwargs, parallel=False)


def partial_path(path):
    """Where a file is written before it is complete.

    Hidden, in the same directory (so the final rename is atomic), and named after the
    final file so that a user who looks sees what it is.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def publish(partial, final):
    """Move a completed file to its final path in one atomic step, durably."""
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    directory = os.open(Path(final).parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
