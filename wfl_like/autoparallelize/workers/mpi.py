"""Run autoparallelized operations over MPI ranks, as wfl's ``WFL_MPIPOOL`` does.

Every rank runs the same script.  With the env var ``WFL_MPIPOOL`` set, a script calls
:func:`init` at its start: ranks 1..N-1 become workers there and never run the rest of
the script; rank 0 goes on, and every autoparallelized call uses the workers::

    from wfl_like.autoparallelize import mpipool_support
    mpipool_support.init()
    ...   # only rank 0 gets here

    WFL_MPIPOOL=1 mpiexec -n 4 python script.py

Worker rank ``r`` is worker ``r - 1``
(:func:`~wfl_like.autoparallelize.workers.devices.worker_index`); with ``WFL_TORCH_N_GPUS=N`` it
sets ``CUDA_VISIBLE_DEVICES`` as a pool worker of that index would have it, in
:func:`init`, before it receives any operation.  Each worker rank also limits the
thread pools of its native libraries (BLAS, OpenMP) as a pool worker does
(:mod:`~wfl_like.autoparallelize.workers.threads`), sharing its node's CPUs among the worker
ranks on that node; rank 0, the driver, is left as it is.

Needs the ``mpi`` extra (``pip install "wfl-like[mpi]"``: mpi4py, mpipool and the mpich
wheel, which brings ``mpiexec``).
"""

import logging
import os

from wfl_like.autoparallelize.workers import devices, threads
from wfl_like.autoparallelize.workers.opcall import NESTED_ENV

MPIPOOL_ENV = "WFL_MPIPOOL"

log = logging.getLogger(__name__)

# The MPI executor of this process, once init() made one: there is one per MPI job.
_executor = None


def init(verbose=False):
    """Make the MPI workers, if ``$WFL_MPIPOOL`` is set; a no-op otherwise or when called again.

    On worker ranks this does not return: they serve rank 0 until it finishes, then exit.
    Call it before anything reads ``CUDA_VISIBLE_DEVICES`` (before torch uses a GPU):
    worker ranks set it here.

    Raises
    ------
    ValueError
        ``WFL_TORCH_N_GPUS`` or ``WFL_LIKE_WORKER_THREADS`` has a bad value (raised on
        every rank, as every rank reads them).

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
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() < 2:
        # asked before mpipool, which refuses one process with a message that names no remedy
        raise RuntimeError(f"{MPIPOOL_ENV} is set but this MPI job has no rank besides rank 0; "
                           f"run it with mpiexec -n N, N >= 2, or unset {MPIPOOL_ENV}")
    _enter_worker_rank()
    # rejoin=False: a worker leaves the process when rank 0 is done, instead of going on
    # to run the driver's code
    _executor = MPIExecutor(rejoin=False)
    if verbose:
        log.info("MPI pool with %d worker ranks", _executor.size)


def active_executor():
    """The MPI executor made by :func:`init`, or None."""
    return _executor


def _enter_worker_rank():
    """On a worker rank, take the worker index ``rank - 1``, its device and its thread limit,
    before the executor starts serving (and so before any operation is unpickled here)."""
    plan = devices.device_plan()
    threads.requested_threads()     # a bad value is refused on every rank, before the collective call
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    # every rank takes part (a collective call), rank 0 too
    workers_here = _worker_ranks_on_this_node(MPI, rank)
    if rank == 0:
        return
    index = rank - 1
    limit = threads.worker_thread_limit(workers_here, threads.available_cpus())
    devices.enter_worker(index, devices.worker_environment(devices.device_of(plan, index),
                                                           threads.thread_environment(limit)))
    # as in a pool worker: an autoparallelized call made by an operation here runs serially
    os.environ[NESTED_ENV] = "1"
    if limit is not None:
        threads.limit_loaded_libraries(limit)


def _worker_ranks_on_this_node(MPI, rank):
    """How many worker ranks (all but rank 0) share this rank's node; collective over COMM_WORLD."""
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.allreduce(0 if rank == 0 else 1)
    finally:
        node.Free()

