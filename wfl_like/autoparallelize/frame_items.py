"""Items that are frames of input files, moved as byte ranges instead of parsed structures.

For inputs read from extended XYZ files the driver never builds an ``Atoms``: it indexes
the frames of each file by byte offset, and a chunk's items are :class:`FrameItem` s.  The
worker reads and parses its frames itself, runs the operation, and renders the outputs
to text; the driver only writes that text, in input order.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameItem:
    """One frame of an input file, by where its bytes lie.

    Attributes
    ----------
    path : str
        The file, as the worker opens it.
    start, end : int
        Byte offsets: the frame is ``file[start:end]``.
    location : tuple of int
        Its place in the inputs (relative to the ConfigSet being iterated), as a
        ConfigSet iteration would give it: the location stored in the frame, else its
        frame number, preceded by the file's number when the set reads several files.
    digest : bytes or None
        A hash of the frame's raw bytes, computed by the driver when a journal is kept
        (None otherwise): whatever the file holds for the frame (stored energies,
        forces, info) is part of the item's identity.
    """

    path: str
    start: int
    end: int
    location: tuple
    digest: bytes = None

    def identity(self):
        """What the cache key of this item is made of: its bytes and its place."""
        if self.digest is None:
            raise ValueError(f"frame at bytes {self.start}..{self.end} of {self.path!r} was not hashed")
        return ("frame", self.digest, self.location)
