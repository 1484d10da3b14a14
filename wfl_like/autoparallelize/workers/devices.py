"""One GPU per worker: ``WFL_TORCH_N_GPUS`` and the worker's index.

Each worker of a pool has a stable index ``k`` in ``0..num_workers-1`` (a worker that
replaces a dead or recycled one takes its index).  With ``WFL_TORCH_N_GPUS=N`` set in
the driver, worker ``k`` is started with ``CUDA_VISIBLE_DEVICES`` naming one device, the
``k mod N``-th of the devices the driver may use: the first ``N`` entries of the
driver's own ``CUDA_VISIBLE_DEVICES`` where it has one, else ``0..N-1``.  Each worker
then sees its GPU as ``cuda:0``, whatever library it loads, and loads it after the
variable is set.

The variables a worker starts with (its device, and its thread limits from
:mod:`~wfl_like.autoparallelize.workers.threads`) are set by one mechanism:
:func:`environment_for_start` for a spawned worker, :func:`enter_worker` for all.

Nothing here imports torch: the variable is all that CUDA needs, and torch is only
looked at where the driver has already imported it.
"""

import contextlib
import os
import sys
import threading

GPUS_ENV = "WFL_TORCH_N_GPUS"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"

# Where the NVIDIA driver lists the GPUs of the machine (Linux), one entry per GPU.
_NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"

# This process's worker index, once it is a worker (pool worker or MPI worker rank).
_worker_index = None

# Held while the driver's environment carries a worker's device for a process start.
_environ_lock = threading.Lock()


def worker_index():
    """The index of the worker process this runs in, or None outside a worker.

    Returns
    -------
    int or None
        ``k`` in ``0..num_workers-1`` in a worker of wfl_like's own pool (stable: a
        worker that replaces a dead or recycled one takes its index), ``rank - 1`` on an
        MPI worker rank (``WFL_MPIPOOL``).  None in the driver, in a serial run (which
        runs in the driver) and on an executor that is not wfl_like's (Dask, loky, ...),
        whose processes have no index of ours: use ``worker_index() or 0`` where a
        number is needed whatever runs the operation.
    """
    return _worker_index


def requested_gpus():
    """``$WFL_TORCH_N_GPUS`` as a number of GPUs, or None when it is unset or empty.

    Raises
    ------
    ValueError
        The variable is not a whole number >= 1; the message names it.
    """
    return whole_number_variable(os.environ, GPUS_ENV, "the number of GPUs to share among the workers")


def whole_number_variable(environ, name, meaning):
    """The value of the environment variable ``name`` as a whole number >= 1, or None when
    it is unset or empty.

    Raises
    ------
    ValueError
        It is set to anything else; the message names it and says what it is for (``meaning``).
    """
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number >= 1; set it to "
                         f"{meaning}, or unset it")
    return value


def device_plan():
    """The devices to hand out to workers, or None when ``WFL_TORCH_N_GPUS`` is not set.

    Returns
    -------
    list of str or None
        ``N`` entries for ``CUDA_VISIBLE_DEVICES``; worker ``k`` gets entry ``k mod N``
        (:func:`device_of`).  From the driver's own ``CUDA_VISIBLE_DEVICES`` where it is
        set (indices, UUIDs or MIG names, kept as they are written), else ``0..N-1``.

    Raises
    ------
    ValueError
        ``WFL_TORCH_N_GPUS`` is not a whole number >= 1, or asks for more GPUs than the
        driver's ``CUDA_VISIBLE_DEVICES`` lists, or (where the NVIDIA driver says how
        many) than the machine has.
    """
    wanted = requested_gpus()
    if wanted is None:
        return None
    visible = driver_environment().get(VISIBLE_ENV)
    if visible is not None:
        listed = [entry.strip() for entry in visible.split(",") if entry.strip()]
        if len(listed) < wanted:
            raise ValueError(f"environment variable {GPUS_ENV}={wanted} asks for more GPUs than "
                             f"{VISIBLE_ENV}={visible!r} makes visible ({len(listed)}); lower {GPUS_ENV}, or "
                             f"list more devices in {VISIBLE_ENV}")
        return listed[:wanted]
    present = machine_gpu_count()
    if present is not None and present < wanted:
        raise ValueError(f"environment variable {GPUS_ENV}={wanted} asks for more GPUs than this machine has "
                         f"({present}, as {_NVIDIA_GPUS_DIR} lists them); lower {GPUS_ENV}")
    return [str(i) for i in range(wanted)]


def driver_environment():
    """A copy of this process's environment, without what a process start in another thread lends it."""
    with _environ_lock:
        return dict(os.environ)


def machine_gpu_count():
    """How many NVIDIA GPUs the kernel driver lists, or None where it does not say."""
    try:
        return len(os.listdir(_NVIDIA_GPUS_DIR))
    except OSError:
        return None


def device_of(plan, index):
    """The ``CUDA_VISIBLE_DEVICES`` value of worker ``index`` under ``plan`` (None: no plan)."""
    if plan is None or index is None:
        return None
    return plan[index % len(plan)]


def enter_worker(index, environment=None):
    """Make this process worker ``index``, with the variables of ``environment`` set in its environment.

    Called first thing in a worker, before the operation or its initializer is
    unpickled, so that whatever they import sees the worker's device (and its thread
    limits, :mod:`~wfl_like.autoparallelize.workers.threads`).

    Parameters
    ----------
    index : int or None
    environment : dict of str to str, optional
        What :func:`worker_environment` gives for this worker.
    """
    global _worker_index
    _worker_index = index
    os.environ.update(environment or {})


def worker_environment(device=None, threads=None):
    """The variables a worker is started with: ``{name: value}``, empty when there is nothing to set.

    Parameters
    ----------
    device : str, optional
        Its ``CUDA_VISIBLE_DEVICES`` (:func:`device_of`).
    threads : dict of str to str, optional
        Its thread-pool variables (:func:`~wfl_like.autoparallelize.workers.threads.thread_environment`).
    """
    environment = dict(threads or {})
    if device is not None:
        environment[VISIBLE_ENV] = device
    return environment


@contextlib.contextmanager
def environment_for_start(environment):
    """Give the driver's environment the variables of ``environment`` while a process starts.

    For the ``spawn`` start method, whose child interpreter imports the driver's main
    module and unpickles the worker's arguments before any code of ours runs there: it
    must start with the worker's ``CUDA_VISIBLE_DEVICES`` and thread limits (a library
    loaded by that import reads them once, as it loads).  The driver's values are put
    back at once; the lock keeps two starts (two pools in two threads) from mixing
    their variables.
    """
    if not environment:
        yield
        return
    with _environ_lock:
        before = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value


def refuse_fork_after_cuda(start_method):
    """Raise if workers are to be forked from a driver that has already initialised CUDA.

    A forked child cannot use CUDA once its parent has; this is told before any work
    instead of failing in every worker.  torch is only looked at if already imported.

    Raises
    ------
    RuntimeError
        ``start_method`` is ``fork`` and torch reports CUDA initialised in this process.
    """
    torch = sys.modules.get("torch")
    if start_method != "fork" or torch is None:
        return
    try:
        initialized = bool(torch.cuda.is_initialized())
    except Exception:
        return      # not a torch we know how to ask: the workers will say what goes wrong
    if initialized:
        raise RuntimeError(f"{GPUS_ENV} is set and this process has already initialised CUDA, so forked "
                           f"workers could not use their GPUs; set WFL_LIKE_START_METHOD=spawn (or forkserver), "
                           f"or do not use CUDA in the driver before the parallel call")
