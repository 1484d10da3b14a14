"""Run autoparallelized operations over MPI ranks, as wfl's ``WFL_MPIPOOL`` does.

Every rank runs the same script.  With the env var ``WFL_MPIPOOL`` set, a script calls
:func:`init` at its start: ranks 1..N-1 become workers there and never run the rest of
the script; rank 0 goes on, and every autoparallelized call uses the workers::

    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()
    ...   # only rank 0 gets here

    WFL_MPIPOOL=1 mpiexec -n 4 python script.py

Needs the ``mpi`` extra (``pip install "wfl-like[mpi]"``: mpi4py, mpipool and the mpich
wheel, which brings ``mpiexec``).
"""

import logging
import os

MPIPOOL_ENV = "WFL_MPIPOOL"

log = logging.getLogger(__name__)

# The MPI executor of this process, once init() made one: there is one per MPI job.
_executor = None


def init(verbose=False):
    """Make the MPI workers, if ``$WFL_MPIPOOL`` is set; a no-op otherwise or when called again.

    On worker ranks this does not return: they serve rank 0 until it finishes, then exit.

    Parameters
    ----------
    verbose : bool, default False
        Log on rank 0 how many workers there are.
    """
    global _executor
    if _executor is not None or not os.environ.get(MPIPOOL_ENV):
        return
    try:
        from mpipool import MPIExecutor
    except ImportError:
        raise ImportError(f"{MPIPOOL_ENV} is set but mpipool is not installed; install the mpi extra: "
                          f"pip install \"wfl-like[mpi]\"") from None
    # rejoin=False: a worker leaves the process when rank 0 is done, instead of going on
    # to run the driver's code
    executor = MPIExecutor(rejoin=False)
    if executor.size < 1:
        raise RuntimeError(f"{MPIPOOL_ENV} is set but this MPI job has no rank besides rank 0; "
                           f"run it with mpiexec -n N, N >= 2")
    _executor = executor
    if verbose:
        log.info("MPI pool with %d worker ranks", executor.size)


def active_executor():
    """The MPI executor made by :func:`init`, or None."""
    return _executor
