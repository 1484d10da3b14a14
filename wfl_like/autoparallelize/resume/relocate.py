"""A journaled output text moved to another location, as rendering it there would write it.

A frame of an input file is found in the journal by its bytes, not by its place, so a
frame that moved (a structure inserted before it) is reused.  Its text was rendered at the
location it had then: each structure's ``_ConfigSet_loc`` starts with that location (an
output that is a list adds its own levels, `` / 5 / 0``, `` / 5 / 1``), and the first level
picks the output file where there are several.  :func:`relocated` rewrites those values to
the new place, keeping their tails; where the text is not exactly what that needs (one
plain location value per structure, beginning with the old one), it refuses rather than
guesses, and the item is computed again.
"""

import re

from wfl_like.locations import LOC_KEY, format_location

_KEY = LOC_KEY + "="
# the value as the renderer writes it: quoted, levels of " / <digits>"
_VALUE = re.compile(r'"((?: / \d+)*)"')


def relocated(text, count, old_inner, new_inner):
    """``text`` (``count`` frames rendered with locations under ``old_inner``) with those
    locations moved under ``new_inner``, or None when that cannot be done exactly.

    Parameters
    ----------
    text : str
        Whole frames of extended XYZ, as the journal gives them back (checked).
    count : int
        How many frames it holds.
    old_inner, new_inner : tuple of int
        The location written inside the output file (after the file's level, where the
        first level picks the file) at which the text was rendered, and the new one.
    """
    if old_inner == new_inner:
        return text
    if not old_inner or not new_inner:
        # at the top of a file a structure is written without a location: nothing to move
        return None
    old, new = format_location(old_inner), format_location(new_inner)
    pieces, position = [], 0
    for _ in range(count):
        comment_start = text.index("\n", position) + 1
        comment_end = text.index("\n", comment_start)
        n_atoms = int(text[position:comment_start])
        line = _moved_comment(text[comment_start:comment_end], old, new)
        if line is None:
            return None
        frame_end = comment_end + 1
        for _ in range(n_atoms):
            frame_end = text.index("\n", frame_end) + 1
        pieces += [text[position:comment_start], line, text[comment_end:frame_end]]
        position = frame_end
    if position != len(text):
        return None
    return "".join(pieces)


def moved_output(output, renderer, old_location, new_location):
    """``output`` (a RenderedOutput rendered at ``old_location``, a whole input location) as
    rendering it at ``new_location`` gives it, or None when that cannot be done exactly.

    ``renderer`` decides, as rendering does, which file and inner location a location gives.
    """
    try:
        _, old_inner = renderer.file_of(old_location)
        file_i, new_inner = renderer.file_of(new_location)
    except ValueError:
        return None     # it picks no file of this run: the item's own check says so when computed
    text = relocated(output.text, output.count, old_inner, new_inner)
    return None if text is None else output._replace(file_i=file_i, text=text)


def _moved_comment(line, old, new):
    """The comment line with its one location value moved from under ``old`` to under ``new``;
    None when it holds no such single value (or ``old`` elsewhere, which might be a copy)."""
    at = line.find(_KEY)
    if at < 0 or line.find(_KEY, at + 1) >= 0 or (at > 0 and line[at - 1] not in " \t"):
        return None
    value_start = at + len(_KEY)
    match = _VALUE.match(line, value_start)
    if match is None or (match.end() < len(line) and not line[match.end()].isspace()):
        return None
    value = match.group(1)
    outside = line[:at] + line[match.end():]
    if not (value == old or value.startswith(old + " / ")) or old in outside:
        return None
    return f'{line[:value_start]}"{new}{value[len(old):]}"{line[match.end():]}'
