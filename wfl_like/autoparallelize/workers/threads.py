"""How many threads the native libraries of each worker process may start.

OpenBLAS, MKL, BLIS and OpenMP each start as many threads as the machine has cores,
in every process that loads them.  ``N`` workers doing linear algebra at once then run
``N`` times as many threads as there are cores, and slow each other down (more than
twice, measured with EMT relaxations in 2 workers on 2 cores).  So each worker of a pool
of ``N`` is limited to ``max(1, cpus // N)`` threads, as loky does for its workers:

- for the libraries it already has loaded (a forked worker inherits the driver's numpy),
  through :mod:`threadpoolctl`;
- for those loaded later (torch reads ``OMP_NUM_THREADS`` when it is imported), through
  the variables of :data:`THREAD_VARIABLES`, set in the worker's environment (a spawned
  worker starts with them, see :func:`~wfl_like.autoparallelize.workers.devices.environment_for_start`).

The user's own settings win: where the driver's environment sets any of those
variables, none is touched.  ``WFL_LIKE_WORKER_THREADS=N`` sets the number of threads
per worker explicitly, whatever the driver's environment says.
"""

import os

from threadpoolctl import ThreadpoolController

from wfl_like.autoparallelize.workers.devices import driver_environment, whole_number_variable

THREADS_ENV = "WFL_LIKE_WORKER_THREADS"

# The variables through which the native thread pools that numerical Python loads take
# their size (the ones loky sets for its workers).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def requested_threads(environ=None):
    """``$WFL_LIKE_WORKER_THREADS`` as a number of threads, or None when it is unset or empty.

    ``environ``: the environment to read (default: this process's, as
    :func:`~wfl_like.autoparallelize.workers.devices.driver_environment` gives it).

    Raises
    ------
    ValueError
        The variable is not a whole number >= 1; the message names it.
    """
    environ = driver_environment() if environ is None else environ
    return whole_number_variable(environ, THREADS_ENV,
                                 "the number of threads each worker's native libraries (BLAS, OpenMP) may use")


def user_thread_settings(environ=None):
    """The variables of :data:`THREAD_VARIABLES` that ``environ`` (default: this process's environment) sets."""
    environ = driver_environment() if environ is None else environ
    return {name: environ[name] for name in THREAD_VARIABLES if name in environ}


def available_cpus():
    """CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_thread_limit(workers, cpus):
    """Threads per worker for a pool of ``workers`` on ``cpus`` CPUs, or None to leave them alone.

    Parameters
    ----------
    workers : int
        Worker processes that may run at once (>= 1).
    cpus : int
        CPUs they share.

    Returns
    -------
    int or None
        ``$WFL_LIKE_WORKER_THREADS`` where set; else None where the environment sets any
        of :data:`THREAD_VARIABLES` (the user chose); else ``max(1, cpus // workers)``.

    Raises
    ------
    ValueError
        ``WFL_LIKE_WORKER_THREADS`` has a bad value.
    """
    # one snapshot: not the variables a process start in another thread lends the environment
    environ = driver_environment()
    explicit = requested_threads(environ)
    if explicit is not None:
        return explicit
    if user_thread_settings(environ):
        return None
    return max(1, cpus // max(1, workers))


def thread_environment(limit):
    """The environment variables that give later-loaded libraries ``limit`` threads (``{}`` for None)."""
    if limit is None:
        return {}
    return {name: str(limit) for name in THREAD_VARIABLES}


def loaded_libraries():
    """The native thread pools this process has loaded, for :func:`limit_loaded_libraries`.

    Looked up by the driver before it forks workers, which inherit the answer: looking
    again in each worker costs it milliseconds (more while the workers start side by side
    on few cores), setting the limits through the inherited answer tens of microseconds.
    Of no use to a spawned worker, which loads its libraries anew.

    Returns
    -------
    threadpoolctl.ThreadpoolController or None
        None where the look fails: each worker then looks itself, and says what went
        wrong there.
    """
    try:
        return ThreadpoolController()
    except Exception:
        return None


def limit_loaded_libraries(limit, loaded=None):
    """Limit the thread pools of the native libraries this process has loaded to ``limit`` threads.

    The limit stays for the life of the process (it is not undone on return).

    Parameters
    ----------
    limit : int
    loaded : threadpoolctl.ThreadpoolController, optional
        What :func:`loaded_libraries` said in the process this one was forked from; where
        None, this process looks itself.
    """
    if loaded is None:
        loaded = ThreadpoolController()
    # the limiter is dropped, not used in ``with``: the limits are not restored, which is the point
    loaded.limit(limits=limit)
