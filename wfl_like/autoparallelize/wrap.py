"""Wrapping an operation for the engine: the :func:`autoparallelized` decorator, and the
signature and docstring its wrapper shows."""

import functools
import inspect
import re

from wfl_like.autoparallelize.autoparainfo import AutoparaInfo
from wfl_like.autoparallelize.base import autoparallelize
from wfl_like.autoparallelize.workers.opcall import PER_ITEM_INFO


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


def autoparallelized(op=None, *, input_type="Atoms", **default_autopara_info):
    """Decorator: turn an operation on a list of items into its parallel wrapper.

    ``@autoparallelized`` or ``@autoparallelized(num_inputs_per_python_subprocess=10)``
    above ``def op(items, ...)`` gives a function called as
    ``op(inputs, outputs, ..., autopara_info=None)``, whose signature and docstring
    (shown by ``help()``) say so.  The undecorated function stays reachable as
    ``.op``.

    Parameters
    ----------
    op : callable, optional
        The operation (when used without parentheses).
    input_type : str, default "Atoms"
        What the inputs are, for the docstring.
    **default_autopara_info
        Defaults for :class:`AutoparaInfo` options, e.g. ``num_inputs_per_python_subprocess``.
    """
    AutoparaInfo(**default_autopara_info)     # reject unknown names now, not at the first call

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return autoparallelize(func, *args, default_autopara_info=default_autopara_info, **kwargs)

        wrapper.op = func
        wrapper.__signature__ = _wrapper_signature(func, default_autopara_info.get("iterable_arg", 0))
        del wrapper.__wrapped__      # help() and inspect must show the wrapper's own signature
        autoparallelize_docstring(wrapper, func, input_type,
                                  input_arg=default_autopara_info.get("iterable_arg", 0))
        return wrapper

    return decorate if op is None else decorate(op)


def _wrapper_signature(func, iterable_arg):
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(iterable_arg, int) and iterable_arg < len(positional):
        params.remove(positional[iterable_arg])
    elif isinstance(iterable_arg, str):
        params = [p for p in params if p.name != iterable_arg]
    params = [p for p in params if p.name != PER_ITEM_INFO]
    io_params = [inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                 inspect.Parameter("outputs", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    rest = [p.replace(kind=p.POSITIONAL_OR_KEYWORD) if p.kind == p.POSITIONAL_ONLY else p for p in params]
    extra = [inspect.Parameter("autopara_info", inspect.Parameter.KEYWORD_ONLY, default=None)]
    if PER_ITEM_INFO in inspect.signature(func).parameters:
        extra.append(inspect.Parameter("rng", inspect.Parameter.KEYWORD_ONLY, default=None))
    var_kw = [p for p in rest if p.kind == p.VAR_KEYWORD]
    rest = [p for p in rest if p.kind != p.VAR_KEYWORD]
    return inspect.Signature(io_params + rest + extra + var_kw)
