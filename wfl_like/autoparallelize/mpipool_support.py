"""wfl's import path of the MPI backend: ``from wfl_like.autoparallelize import mpipool_support``.

The backend itself is :mod:`wfl_like.autoparallelize.workers.mpi`; see there.
"""

from wfl_like.autoparallelize.workers.mpi import MPIPOOL_ENV, active_executor, init

__all__ = ["MPIPOOL_ENV", "active_executor", "init"]
