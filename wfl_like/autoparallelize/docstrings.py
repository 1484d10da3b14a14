"""Docstrings of autoparallelized wrappers, made from the operation's numpy-style docstring."""

import inspect
import re

_SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}\s*$", re.MULTILINE)
_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(:.*)?$")


def autoparallelize_docstring(wrapped_func, wrappable_func, input_iterable_type, input_arg=0):
    """Set ``wrapped_func.__doc__`` from the docstring of the operation it wraps.

    The operation's own input parameter (at ``input_arg``) is replaced by ``inputs``
    and ``outputs``, ``autopara_info`` is added, and the Returns section says that a
    ConfigSet comes back.

    Parameters
    ----------
    wrapped_func : callable
        The autoparallelized wrapper; its ``__doc__`` is set.
    wrappable_func : callable
        The operation, with a numpy-style docstring (or none).
    input_iterable_type : str
        What the inputs are, e.g. ``"Atoms"``.
    input_arg : int or str, default 0
        Position or name of the operation's input parameter.

    Returns
    -------
    str
        The new docstring.
    """
    doc = inspect.cleandoc(wrappable_func.__doc__ or "")
    summary, sections = _split_sections(doc)
    params = sections.get("Parameters", [])
    names = [_ENTRY.match(entry[0]).group(1) if _ENTRY.match(entry[0]) else "" for entry in params]
    if isinstance(input_arg, str):
        drop = names.index(input_arg) if input_arg in names else None
    else:
        drop = input_arg if input_arg < len(params) else None
    kept = [entry for i, entry in enumerate(params) if i != drop and names[i] != "_autopara_per_item_info"]
    sections["Parameters"] = [
        [f"inputs : iterable of {input_iterable_type}", "    Input items, usually a ConfigSet."],
        ["outputs : OutputSpec or None", "    Where the output structures go; None keeps none."],
    ] + kept + [
        ["autopara_info : AutoparaInfo or dict, optional",
         "    How to parallelize: num_python_subprocesses, num_inputs_per_python_subprocess, ..."],
    ]
    sections["Returns"] = [["ConfigSet or None", "    The output structures (None when outputs is None)."]]
    order = ["Parameters", "Returns"] + [name for name in sections if name not in ("Parameters", "Returns")]
    parts = [summary] if summary else []
    for name in order:
        lines = [line for entry in sections[name] for line in entry]
        parts.append(f"{name}\n{'-' * len(name)}\n" + "\n".join(lines))
    wrapped_func.__doc__ = "\n\n".join(parts) + "\n"
    return wrapped_func.__doc__


def _split_sections(doc):
    """Split a numpy docstring into its summary and ``{section: [entry lines, ...]}``."""
    matches = list(_SECTION.finditer(doc))
    if not matches:
        return doc.strip(), {}
    summary = doc[:matches[0].start()].strip()
    sections = {}
    for match, following in zip(matches, matches[1:] + [None]):
        body = doc[match.end():following.start() if following else len(doc)].strip("\n")
        entries = []
        for line in body.splitlines():
            if line and not line[0].isspace():
                entries.append([line])
            elif entries:
                entries[-1].append(line)
            elif line.strip():
                entries.append([line])
        while entries and entries[-1] and not entries[-1][-1].strip():
            entries[-1].pop()
        sections[match.group(1)] = entries
    return summary, sections
