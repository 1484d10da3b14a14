"""Run an operation over many inputs in parallel: :func:`autoparallelize` and friends."""

import sys
import types

from wfl_like.autoparallelize.autoparainfo import AutoparaInfo
from wfl_like.autoparallelize.base import autoparallelize, autoparallelized
from wfl_like.autoparallelize.devices import worker_index
from wfl_like.autoparallelize.docstrings import autoparallelize_docstring

__all__ = ["AutoparaInfo", "autoparallelize", "autoparallelize_docstring", "autoparallelized", "worker_index"]


class _CallableModule(types.ModuleType):
    # `wfl_like.autoparallelize` is this package (wfl's import path) and also what
    # `from wfl_like import autoparallelize` gives, since importing a submodule binds
    # its name in the parent package.  Calling the package calls the function.
    def __call__(self, *args, **kwargs):
        return autoparallelize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
