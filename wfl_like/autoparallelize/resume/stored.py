"""How a finished item's output is kept in the journal: as file text, or in the codec's format.

An output made for an output file (a :class:`~wfl_like.io.renderer.RenderedOutput`: the
extended-XYZ text it adds to file ``file_i``, holding ``count`` structures) is kept as
that very text, so that rebuilding the file from the journal is a byte copy.  Texts of
``COMPRESS_FROM`` bytes or more are compressed into the zlib format when that saves at
least a quarter: by ISA-L (the ``isal`` package, where it is installed) at its level 1,
else by zlib at level 1 with its run-length strategy.  Either stream is read back by
Python's own zlib.  Any other output (outputs in memory, ``outputs=None``) is kept in
:mod:`~wfl_like.autoparallelize.resume.codec`'s data-only format.  Nothing is ever pickled.

==========  ==============================================================================
form        ``data``
==========  ==============================================================================
codec       the codec's JSON text
text        the output's text, UTF-8 bytes
zlib        the same, compressed into the zlib format
==========  ==============================================================================

A text is kept with the input location it was rendered at (``location``, in wfl's
string form), so that a frame found again at another place is moved there
(:mod:`~wfl_like.autoparallelize.resume.relocate`) rather than computed again.

Read back, a row is untrusted: every field is checked for type and range, a compressed
text is never inflated past the length on record (nor past ``MAX_RATIO`` times its
compressed size, so a planted decompression bomb costs no memory), and the text must be
``count`` structures of the ``N + 2`` lines that each frame of extended XYZ is.
"""

import functools
import zlib
from typing import NamedTuple

from wfl_like.autoparallelize.resume import codec
from wfl_like.io.renderer import RenderedOutput
from wfl_like.locations import format_location, parse_location

CODEC, TEXT, ZLIB = "codec", "text", "zlib"

# Measured on 32-atom cells with energy and forces (3.6 kB of text each): zlib at level 1
# with its run-length strategy keeps 41% of the bytes (a 2.4x smaller journal) in 24 us per
# text; ISA-L at its level 1 keeps 38% in 13.5 us, which is a twentieth of all the CPU a
# cheap operation's item costs.  Below a few hundred bytes either saves little (1.3x at
# 100-200 bytes).
COMPRESS_FROM = 1024
COMPRESS_LEVEL = 1
_STRATEGY = zlib.Z_RLE
# A compressed text is kept only when it is at most this share of the text ...
_WORTH_IT = 0.75
# ... and at least this fraction of it: the reader refuses a larger inflation, so a row
# that claims a huge text inflates into no more memory than this many times what it holds.
MAX_RATIO = 64

# Whole numbers on record (file numbers, counts, sizes) lie in 0.._LARGEST.
_LARGEST = 2 ** 62


class Stored(NamedTuple):
    """One done item's output as the journal's row holds it (see the module's table)."""

    form: str
    data: object
    file_i: int = None
    count: int = None
    size: int = None
    location: str = None


class PackedOutput(NamedTuple):
    """A worker's rendered output with its journal form made there (:func:`pack`), so that the
    driver, which writes the text, does not compress it too.

    Attributes
    ----------
    rendered : RenderedOutput
        What the output file receives.
    packed : Stored
        ``pack(rendered)``.
    """

    rendered: RenderedOutput
    packed: Stored


def packed_in_worker(rendered):
    """``rendered`` with its journal form attached, or as it is when it cannot be packed (the
    driver then warns as for any output the journal cannot keep)."""
    try:
        return PackedOutput(rendered, pack(rendered))
    except codec.UnencodableError:
        return rendered


def unwrapped(output):
    """``(output, packed)``: a worker's output without its journal form, and that form (None when
    there is none, or when it does not belong to the text: then the driver packs the text itself)."""
    if type(output) is not PackedOutput:
        return output, None
    rendered, packed = output
    if not (isinstance(packed, Stored) and packed.form in (TEXT, ZLIB) and type(packed.data) is bytes
            and isinstance(rendered, RenderedOutput) and packed.file_i == rendered.file_i
            and packed.count == rendered.count):
        packed = None
    return rendered, packed


class MalformedOutput(ValueError):
    """A row whose output is not what :func:`pack` writes (the message says what is wrong)."""


def pack(output):
    """The journal's form of ``output``.

    Raises
    ------
    codec.UnencodableError
        An output that is not a RenderedOutput holds what the codec cannot keep exactly, or
        a RenderedOutput's text cannot be encoded as UTF-8.
    """
    if not isinstance(output, RenderedOutput):
        return Stored(CODEC, codec.encode(output))
    try:
        data = output.text.encode("utf-8")
    except (AttributeError, UnicodeEncodeError) as exc:
        raise codec.UnencodableError(f"its text cannot be kept as UTF-8 ({type(exc).__name__})") from None
    size = len(data)
    if size >= COMPRESS_FROM:
        packed = compress(data)
        if size <= MAX_RATIO * len(packed) and len(packed) <= size * _WORTH_IT:
            return Stored(ZLIB, packed, output.file_i, output.count, size)
    return Stored(TEXT, data, output.file_i, output.count, size)


def compress(data):
    """``data`` (bytes) compressed into the zlib format, as fast as this machine can (see the module)."""
    fast = _isal_zlib()
    if fast is not None:
        return fast.compress(data, COMPRESS_LEVEL)
    deflater = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 8, _STRATEGY)
    return deflater.compress(data) + deflater.flush()


@functools.lru_cache(maxsize=1)
def _isal_zlib():
    """ISA-L's zlib-format compressor, or None where the ``isal`` package is not installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


def at_location(packed, location):
    """``packed`` (a text's form, from :func:`pack`) with the input location its text was rendered
    at, a tuple, kept beside it; any other form as it is."""
    if packed.form == CODEC:
        return packed
    return packed._replace(location=format_location(location))


def rendered_at(stored):
    """The input location (a tuple) at which a row's text was rendered; None for the codec's form.

    Raises
    ------
    MalformedOutput
        A text without a location in wfl's form, or a location beside the codec's form.
    """
    location = stored.location
    if stored.form == CODEC:
        if location is not None:
            raise MalformedOutput(f"it holds a location ({_show(location)}) for an output that is not text")
        return None
    if type(location) is not str or len(location) > 4096:
        raise MalformedOutput(f"its location is {_show(location)}, not a location of the form ' / 2 / 0'")
    try:
        loc = parse_location(location)
        if not all(0 <= level < _LARGEST for level in loc):
            raise ValueError
        return loc
    except ValueError:
        raise MalformedOutput(f"its location {_show(location)} is not of the form ' / 2 / 0'") from None


def unpack(stored, n_files=None):
    """The output a row holds, checked; the inverse of :func:`pack`.

    Parameters
    ----------
    stored : Stored
        The row's fields as read (any types).
    n_files : int, optional
        How many output files the run writes: a text's ``file_i`` must pick one of them.

    Raises
    ------
    MalformedOutput
        The row is not what :func:`pack` writes.
    """
    form, data = stored.form, stored.data
    if form == CODEC:
        try:
            return codec.decode(data)
        except ValueError as exc:
            raise MalformedOutput(str(exc)) from None
    if form not in (TEXT, ZLIB):
        raise MalformedOutput(f"unknown form {_show(form)}")
    file_i, count, size = stored.file_i, stored.count, stored.size
    for name, value in (("file number", file_i), ("count", count), ("size", size)):
        if type(value) is not int or not 0 <= value < _LARGEST:
            raise MalformedOutput(f"its {name} is {_show(value)}, not a whole number")
    if n_files is not None and file_i >= n_files:
        raise MalformedOutput(f"it goes to output file {file_i}, but this run writes {n_files}")
    if not isinstance(data, bytes):
        raise MalformedOutput(f"its text is stored as {type(data).__name__}, not bytes")
    raw = _inflated(data, size) if form == ZLIB else data
    if len(raw) != size:
        raise MalformedOutput(f"its text is {len(raw)} bytes long, not the {size} on record")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedOutput("its text is not UTF-8") from None
    found = frames_in(text)
    if found != count:
        raise MalformedOutput(f"its text holds {'no whole frames' if found is None else found} "
                              f"where {count} are on record")
    return RenderedOutput(file_i, text, count)


def _inflated(data, size):
    if size > MAX_RATIO * len(data):
        raise MalformedOutput(f"it claims {size} bytes of text from {len(data)} compressed (more than "
                              f"{MAX_RATIO} times)")
    inflater = zlib.decompressobj()
    try:
        # never more than the length on record, whatever the data would inflate to
        raw = inflater.decompress(data, size)
    except zlib.error as exc:
        raise MalformedOutput(f"its compressed text is damaged ({exc})") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise MalformedOutput(f"its compressed text does not end at the {size} bytes on record")
    return raw


def frames_in(text):
    """How many whole frames of ``N + 2`` lines (a count line, a comment line, ``N`` atoms)
    ``text`` holds, or None when it is not made of such frames."""
    if not text.endswith("\n"):
        return 0 if text == "" else None
    head, _, _ = text.partition("\n")
    head = head.strip()
    if head.isascii() and head.isdigit() and len(head) <= 18 and text.count("\n") == int(head) + 2:
        return 1        # one frame, the usual case: no split
    lines = text.split("\n")
    last, line_i, frames = len(lines) - 1, 0, 0      # lines[last] is the '' after the final newline
    while line_i < last:
        head = lines[line_i].strip()
        if not (head.isascii() and head.isdigit()) or len(head) > 18:
            return None
        line_i += int(head) + 2
        frames += 1
    return frames if line_i == last else None


def _show(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
