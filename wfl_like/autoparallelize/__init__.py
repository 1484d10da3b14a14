"""Run an operation over many inputs in parallel: :func:`autoparallelize` and friends.

How data flows through the engine::

    inputs (ConfigSet, or any iterable)            op(list_of_items, *args, **kwargs) -> outputs
       |                                                          ^
       v                                                          |
    chunks.py: item_i, location, per-item rng  -->  workers/: serial | own pool | MPI | any Executor
       |          (pure functions, no I/O)                |   bounded in-flight work, retries,
       v                                                  v   dead-worker detection (supervisor.py)
    resume/cache.py: items already done are skipped   results, back in input order
                                                          |
                                                          v
                                 resume/journal.py: each finished item persisted (within 0.25 s)
                                                          |
                                                          v
                                 OutputSpec: written to a partial file, renamed when complete
                                                          |
                                                          v
                                 the returned ConfigSet over the outputs

- :mod:`.base` is the front door (:func:`autoparallelize`), :mod:`.wrap` the decorator
  :func:`autoparallelized`, :mod:`.autoparainfo` the options.
- :mod:`.chunks` groups inputs into chunks; :mod:`.supervisor` keeps chunks in flight and
  hands results back in order.
- :mod:`.workers` runs the chunks; :mod:`.resume` remembers what was done.
"""

import sys
import types

from wfl_like.autoparallelize.autoparainfo import AutoparaInfo
from wfl_like.autoparallelize.base import autoparallelize
from wfl_like.autoparallelize.wrap import autoparallelize_docstring, autoparallelized
from wfl_like.autoparallelize.workers.devices import worker_index

__all__ = ["AutoparaInfo", "autoparallelize", "autoparallelize_docstring", "autoparallelized", "worker_index"]


class _CallableModule(types.ModuleType):
    # `wfl_like.autoparallelize` is this package (wfl's import path) and also what
    # `from wfl_like import autoparallelize` gives, since importing a submodule binds
    # its name in the parent package.  Calling the package calls the function.
    def __call__(self, *args, **kwargs):
        return autoparallelize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
