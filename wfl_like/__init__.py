"""wfl_like: apply per-structure operations to large collections of atomic configurations in parallel.

The public names are imported on first use, so ``import wfl_like`` stays cheap.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "ConfigSet": "wfl_like.configset",
    "OutputSpec": "wfl_like.configset",
    # the subpackage itself, callable as the function (see wfl_like.autoparallelize)
    "autoparallelize": None,
    "autoparallelized": "wfl_like.autoparallelize",
    "autoparallelize_docstring": "wfl_like.autoparallelize",
    "AutoparaInfo": "wfl_like.autoparallelize",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'wfl_like' has no attribute {name!r}")
    import importlib

    if _PUBLIC[name] is None:
        return importlib.import_module(f"wfl_like.{name}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
