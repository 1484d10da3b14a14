"""A process pool that notices a dead worker at once and loses nothing else.

Like :class:`concurrent.futures.ProcessPoolExecutor`, a thread of the driver waits on
every worker's result pipe *and* its process sentinel, so a worker that dies (signal,
``os._exit``, segfault, out-of-memory kill) is seen at once and its task's future
fails with :class:`~wfl_like.errors.WorkerDiedError` naming the exit code.  Unlike it,
each worker has its own pipe, so the pool knows which task the dead worker ran, fails
only that one, and starts a replacement: the other workers and their tasks carry on.
"""

import collections
import itertools
import logging
import multiprocessing
import os
import pickle
import selectors
import sys
import threading
import time
from concurrent.futures import CancelledError, Executor, Future
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler

from wfl_like.autoparallelize.workers.devices import device_of, environment_for_start, worker_environment
from wfl_like.autoparallelize.workers.threads import loaded_libraries, thread_environment
from wfl_like.autoparallelize.workers.guardian import Guardian, kill_process_group
from wfl_like.autoparallelize.workers.starting import START_LOCK, frozen_for_fork
from wfl_like.autoparallelize.workers.worker import worker_main
from wfl_like.errors import (TaskTimeoutError, WorkerDiedError, WorkerInitializerError, WorkerPoisonedError,
                             describe_exitcode)

log = logging.getLogger(__name__)

# How long workers get to leave after being asked before they are terminated.
_LEAVE_TIMEOUT = 5.0

# The longest single wait of the dispatcher: waits longer than that (a timeout of inf or
# 1e10 s) are made of several, as wait() overflows on them.
_MAX_WAIT = 3600.0

# How often a worker that was asked to leave is looked at while it is waited for.
_EXIT_POLL = 0.05

# With send_ahead, a worker whose last task took less than this many seconds is sent its
# next task while it still runs one (see WorkerPool).
_SEND_AHEAD_BELOW = 0.01
# ... and only a task this small: it must fit in the pipe at once.  The dispatcher's write
# of a bigger one would wait for the worker to read it, while the worker, done with its
# task, waits for the dispatcher to read its reply.
_SEND_AHEAD_BYTES = 16 * 1024


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as ``__cause__``."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


START_METHOD_ENV = "WFL_LIKE_START_METHOD"


def default_context():
    """The start method of worker processes: ``$WFL_LIKE_START_METHOD``, else ``fork`` on
    Linux (workers inherit the operation, as with wfl), else ``spawn``.

    macOS has ``fork`` but system libraries there are not safe to use after it; a driver
    that has initialised CUDA needs ``spawn`` or ``forkserver`` too.

    Raises
    ------
    ValueError
        The env var names a start method this system does not have.
    """
    method = os.environ.get(START_METHOD_ENV, "").strip()
    if not method:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"environment variable {START_METHOD_ENV}={method!r} is not a start method of this "
                         f"system; use one of {multiprocessing.get_all_start_methods()}")
    return multiprocessing.get_context(method)


class _Task:
    __slots__ = ("id", "future", "fn", "args", "kwargs", "timeout", "weight", "deadline")

    def __init__(self, task_id, future, fn, args, kwargs, timeout=None, weight=1):
        self.id, self.future, self.fn, self.args, self.kwargs = task_id, future, fn, args, kwargs
        self.timeout = timeout
        self.weight = weight      # items it holds, for max_items_per_worker
        self.deadline = None      # set when the task reaches a worker


class _Worker:
    def __init__(self, ctx, initializer, initargs, inherited, initializer_timeout=None, index=0, device=None,
                 threads=None, libraries=None):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        method = ctx.get_start_method()
        if method == "fork":
            # the forked child also gets the driver's end of its own pipe: unless it closes
            # it, its recv() never sees end-of-file when the driver dies
            inherited = list(inherited) + [self.conn]
        else:
            inherited = []      # a spawned child inherits none of them (and fd numbers mean nothing there)
            libraries = None    # nor the driver's libraries
        self.index = index
        environment = worker_environment(device, thread_environment(threads))
        self.process = ctx.Process(target=worker_main,
                                   args=(child_conn, initializer, initargs, inherited, index, environment, threads,
                                         libraries),
                                   daemon=True, name=f"wfl_like-worker-{index}")
        # a spawned interpreter imports the driver's main module before worker_main runs:
        # it must start with its device and thread limits; a forked one (or one forked by
        # the forkserver, whose environment is the server's) gets them first thing in worker_main
        with START_LOCK:
            with environment_for_start(environment if method == "spawn" else None), frozen_for_fork(method):
                self.process.start()
            child_conn.close()
        self.ready = False        # the initializer has run; tasks may be sent
        self.task = None          # the _Task being run
        self.next_task = None     # a _Task sent ahead, waiting in its pipe (see _SEND_AHEAD_BELOW)
        self.task_began = None    # when the worker began its task, about (monotonic)
        self.quick = False        # its last task took less than _SEND_AHEAD_BELOW
        self.timed_out = False    # killed because its task (or its initializer) ran past its deadline
        self.items_run = 0
        self.leaving = False      # retired or dead: not to be given tasks
        self.initializer_timeout = initializer_timeout
        self.init_deadline = None     # set when the worker says its initializer starts

    @property
    def sentinel(self):
        return self.process.sentinel

    @property
    def pid(self):
        return self.process.pid

    def deadline(self):
        """When this worker is to be killed, or None."""
        if self.timed_out:
            return None
        if not self.ready:
            return self.init_deadline
        return self.task.deadline if self.task is not None else None


class WorkerPool(Executor):
    """A :class:`concurrent.futures.Executor` over worker processes that survive each other's death.

    Parameters
    ----------
    max_workers : int
        Most worker processes at once.  A worker that dies while running a task is
        replaced.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each worker when it starts.  If it
        raises or kills its worker, the pool is broken: every future fails with
        :class:`~wfl_like.errors.WorkerInitializerError`.
    initargs : tuple
    mp_context : multiprocessing context, optional
        Default: :func:`default_context`.
    on_demand : bool, default False
        Start workers only as tasks arrive, never more than the tasks submitted and not
        yet finished; else all ``max_workers`` at once.
    initializer_timeout : float, optional
        Seconds a worker's initializer may take; past that the worker is killed and the
        pool is broken (:class:`~wfl_like.errors.WorkerInitializerError`).
    max_items_per_worker : int, optional
        Replace a worker once it has run this many items (see :meth:`submit_task`).
    devices : list of str, optional
        ``CUDA_VISIBLE_DEVICES`` values: worker ``k`` is started with ``devices[k % len(devices)]``
        (see :mod:`~wfl_like.autoparallelize.workers.devices`).  Default: the variable is left as
        the driver has it.
    threads : int, optional
        The most threads the native libraries (OpenBLAS, MKL, BLIS, OpenMP) of each
        worker may use: set for those it has loaded (threadpoolctl) and in its
        environment for those it loads later (see :mod:`~wfl_like.autoparallelize.workers.threads`).
        Default: they keep their own defaults (usually one thread per core, in every worker).
    send_ahead : bool or float, default False
        Send a worker whose last task took less than 10 ms (or this many seconds, where a
        number is given) its next task while it still
        runs one, so that it finds the task in its pipe when it is done instead of waiting
        for the dispatcher (which waits for the GIL while the driver's other threads
        work).  For tasks alike in cost, such as chunks of one operation: a task sent
        ahead of one that turns out long waits for it, even while another worker is idle.
        A task sent ahead that never began (its worker died, or was replaced) runs in
        another worker; it is never run twice.

    Notes
    -----
    Each worker has an index ``k`` in ``0..max_workers-1``, which the code it runs reads
    with :func:`~wfl_like.autoparallelize.workers.devices.worker_index`; a worker that replaces
    one that died or was retired takes the lowest free index, so devices stay balanced.
    Each worker leads a process group of its own; whenever a worker ends (done,
    killed, dead) its whole group is killed, so programs the task started go with it,
    and a guardian process (:mod:`~wfl_like.autoparallelize.workers.guardian`) does the same
    if the driver dies.  A worker whose task failed with ``MemoryError`` or "too many
    open files" is replaced, and its future fails with
    :class:`~wfl_like.errors.WorkerPoisonedError`.
    On Linux a worker is also killed by the kernel when the thread that started it
    ends (``PR_SET_PDEATHSIG``).  Create the pool in a thread that outlives it (the
    first workers are started by the thread that creates the pool, those started on
    demand and replacements by the pool's own thread).
    """

    def __init__(self, max_workers, *, initializer=None, initargs=(), mp_context=None, on_demand=False,
                 initializer_timeout=None, max_items_per_worker=None, devices=None, threads=None,
                 send_ahead=False):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a whole number >= 1 or None, not {threads!r}")
        self._threads = threads
        # the driver's native libraries, looked up for its forked workers, and how many modules
        # it had imported then
        self._libraries = None
        # the longest last task after which a worker is sent its next one ahead (0: never)
        self._send_ahead_below = (_SEND_AHEAD_BELOW if send_ahead is True else float(send_ahead or 0))
        self._ctx = mp_context or default_context()
        self._max_workers = max_workers
        self._on_demand = on_demand
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._initializer_timeout = initializer_timeout
        self._max_items_per_worker = max_items_per_worker
        if devices is not None and not devices:
            raise ValueError("devices must name at least one device, or be None")
        self._devices = list(devices) if devices is not None else None
        # The lock guards what submit(), shutdown() and terminate() share with the
        # dispatcher: the queue, the flags and the list of workers.  Only the dispatcher
        # talks to workers, and never while holding it.
        self._lock = threading.Lock()
        self._queue = collections.deque()
        self._task_ids = itertools.count(1)
        self._shutting_down = False
        self._cancelled = False     # queued tasks are not to run (terminate, cancel_futures, broken)
        self._broken = None
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._wake_pending = False      # a wake-up is written and not yet read: submit() need not write another
        self._timeouts_seen = initializer_timeout is not None   # else no worker can have a deadline
        # One selector for the life of the pool, told of each worker as it comes and goes:
        # building one over every worker's two descriptors on every wait costs the driver
        # more than a task's round trip once there are dozens of workers.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._guardian = Guardian()
        self._workers = []
        # workers that became free to take a task, oldest first; one may have left or been
        # given a task since (checked when it is taken): no turn looks at every worker
        self._idle = collections.deque()
        # busy workers that may be sent their next task ahead, checked likewise when taken
        self._ahead = collections.deque()
        self._retiring = []         # asked to leave after their last task; reaped when they have
        try:
            # before the dispatcher thread, so that the first forks happen while the driver
            # has a single thread (on demand: one worker, as a pool is made to run something)
            self._grow(at_least=1)
        except BaseException:
            self._stop_workers(self._workers, timeout=0)
            self._guardian.close()
            self._selector.close()
            raise
        self._thread = threading.Thread(target=self._dispatch_loop, name="wfl_like-pool-dispatcher",
                                        daemon=True)
        self._thread.start()

    def _start_worker(self):
        # A forked worker inherits the driver's ends of its siblings' pipes and of the
        # guardian's; it must close them, or they would never see end-of-file when the
        # driver dies.
        inherited = [w.conn for w in self._workers + self._retiring] + [self._wake_r, self._wake_w,
                                                                         self._selector.fileno()]
        if self._guardian.fileno is not None:
            inherited.append(self._guardian.fileno)
        index = self._free_index()
        worker = _Worker(self._ctx, self._initializer, self._initargs, inherited, self._initializer_timeout,
                         index=index, device=device_of(self._devices, index), threads=self._threads,
                         libraries=self._loaded_libraries())
        self._guardian.watch(worker.pid)
        return worker

    def _loaded_libraries(self):
        if self._threads is None or self._ctx.get_start_method() != "fork":
            return None
        # looked at again only where the driver has imported something since: a module
        # imported while the pool runs (unpickling an output can import one) may have loaded
        # a library that a worker forked later inherits
        if self._libraries is None or self._libraries[1] != len(sys.modules):
            self._libraries = (loaded_libraries(), len(sys.modules))
        return self._libraries[0]

    def _free_index(self):
        """The lowest worker index no current worker holds (one leaving after its last task
        has given its index up already: its replacement takes it)."""
        with self._lock:
            taken = {w.index for w in self._workers}
        return next(i for i in itertools.count() if i not in taken)

    def _grow(self, at_least=0):
        """Start the workers now wanted: up to ``max_workers``, on demand only for queued tasks
        (and until there are ``at_least``)."""
        with self._lock:
            if self._cancelled or (self._shutting_down and not self._queue):
                return
            wanted = self._max_workers - len(self._workers)
            if wanted <= 0:
                return
            if self._on_demand:
                idle = sum(1 for w in self._workers if w.task is None)
                wanted = min(wanted, max(len(self._queue) - idle, at_least - len(self._workers)))
        for _ in range(wanted):
            try:
                worker = self._start_worker()
            except OSError as exc:
                if not self._workers:
                    raise
                # the system refuses more processes (a limit on processes or memory): carry on with these
                log.warning("could not start another worker process (%s); going on with %d", exc, len(self._workers))
                self._max_workers = len(self._workers)
                return
            with self._lock:
                cancelled = self._cancelled
                if not cancelled:
                    self._workers.append(worker)
            if not cancelled:
                self._watch(worker)
            if cancelled:
                # terminate() came while it started: it is not needed, and nobody else will stop it
                self._stop_workers([worker], timeout=0)
                return

    @property
    def pids(self):
        """Process ids of the current workers."""
        with self._lock:
            return [w.pid for w in self._workers]

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` in a worker; returns a :class:`~concurrent.futures.Future`."""
        return self.submit_task(fn, args, kwargs)

    def submit_with_timeout(self, timeout, fn, /, *args, **kwargs):
        """Like :meth:`submit`, but a task still running ``timeout`` seconds after it reached
        a worker has that worker killed (and replaced); its future fails with
        :class:`~wfl_like.errors.TaskTimeoutError`.  ``None`` means no limit.
        """
        return self.submit_task(fn, args, kwargs, timeout=timeout)

    def submit_task(self, fn, args=(), kwargs=None, *, timeout=None, weight=1):
        """Schedule ``fn(*args, **kwargs)``, with a time limit as :meth:`submit_with_timeout`.

        ``weight`` is how many items the task counts as for ``max_items_per_worker``
        (a chunk counts its length).
        """
        future = _PickledResultFuture()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._shutting_down:
                raise RuntimeError("cannot submit to a WorkerPool after shutdown")
            self._queue.append(_Task(next(self._task_ids), future, fn, tuple(args), dict(kwargs or {}),
                                     timeout, weight))
            if timeout is not None:
                self._timeouts_seen = True
            # one wake-up at a time: the dispatcher pairs every queued task once it is awake
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._wake()
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Let the workers finish the queued tasks (or cancel them), then stop them."""
        with self._lock:
            self._shutting_down = True
            if cancel_futures:
                self._cancelled = True
                self._abandon_queue(None)
        self._wake()
        if wait:
            self._join()

    def terminate(self):
        """Stop now: kill every worker, fail running and queued tasks, and wait for the dispatcher."""
        with self._lock:
            self._shutting_down = self._cancelled = True
            self._abandon_queue(None)
            for worker in self._workers + self._retiring:
                # the group only: the dispatcher may have reaped this worker just now, and
                # its pid may be another process's by then (a group id stays reserved while
                # the group has members); one not yet leading a group is killed by the
                # dispatcher's own stop
                kill_process_group(worker.pid, alone_too=False)
        self._wake()
        self._join()

    def _join(self):
        if self._thread is threading.current_thread():
            return
        self._thread.join()
        # closed only now: closing while another thread writes could hit a reused descriptor
        self._wake_r.close()
        self._wake_w.close()
        self._guardian.close()
        self._selector.close()

    def _wake(self):
        try:
            self._wake_w.send_bytes(b"")
        except (OSError, TypeError):
            pass     # the pool is closed: nobody to wake

    def _abandon_queue(self, exc):
        """Cancel the queued tasks (``exc=None``) or fail them with ``exc``; call with the lock held."""
        while self._queue:
            _abandon(self._queue.popleft().future, exc)

    # --- the dispatcher thread --------------------------------------------------------

    def _dispatch_loop(self):
        try:
            while True:
                self._grow()
                # a worker given a task may at once be sent another ahead of it
                while pairs := self._pair_tasks():
                    self._send_tasks(pairs)
                with self._lock:
                    # queued tasks keep a shutting-down pool going only while a worker is
                    # left to run them (dead workers are replaced while tasks are queued)
                    if (self._shutting_down and (not self._queue or not self._workers)
                            and not any(w.task for w in self._workers)):
                        self._abandon_queue(self._broken)
                        break
                    workers = list(self._workers) if self._timeouts_seen else None
                timeout = _time_to_next_deadline(workers) if workers is not None else None
                if self._retiring:
                    # a child the op left behind holds a retired worker's sentinel open: look
                    # for its end, too, so that it and its group are not left until the pool ends
                    timeout = _EXIT_POLL if timeout is None else min(timeout, _EXIT_POLL)
                for key, _ in self._selector.select(timeout):
                    self._handle_event(*key.data)
                self._reap_retired()
                if workers is not None:
                    self._kill_overdue(workers)
        except BaseException as exc:    # a bug here must not leave the caller waiting forever
            log.exception("wfl_like pool dispatcher failed")
            self._break(RuntimeError(f"the worker pool's dispatcher failed: {exc!r}"))
        finally:
            with self._lock:
                workers, self._workers = self._workers, []
            workers, self._retiring = workers + self._retiring, []
            self._stop_workers(workers, timeout=_LEAVE_TIMEOUT)

    def _handle_event(self, kind, worker):
        """One ready descriptor: the wake-up pipe, a worker's pipe, or a worker's (or a retired one's) sentinel."""
        if kind == "wake":
            # read before the flag is cleared: a task queued in between is paired by the next turn anyway
            self._wake_r.recv_bytes()
            with self._lock:
                self._wake_pending = False
        elif kind == "retired":
            if worker in self._retiring:
                self._retiring.remove(worker)
                self._reap(worker)
        elif worker not in self._workers:
            return      # already handled: its pipe and its sentinel were both ready
        elif kind == "conn":
            # one message per event: the selector reports the pipe again while more wait
            if not self._read_one(worker) and worker in self._workers:
                self._handle_death(worker)
        else:
            # what a worker sent before it ended counts (its initializer's error, say), even
            # when its sentinel is seen first
            self._read_messages(worker)
            if worker in self._workers:
                self._handle_death(worker)

    def _watch(self, worker):
        self._selector.register(worker.conn, selectors.EVENT_READ, ("conn", worker))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("sentinel", worker))

    def _unwatch(self, worker):
        """Forget a worker's descriptors, before they are closed (their numbers may be reused)."""
        for fileobj in (worker.conn, worker.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError, OSError):
                pass        # not registered (never started in full), or the selector is closed

    def _pair_tasks(self):
        """Take queued tasks for idle ready workers, then to send ahead to busy quick ones:
        ``[(worker, task, ahead), ...]``."""
        pairs = []
        with self._lock:
            for waiting, ahead in ((self._idle, False), (self._ahead, True)):
                while self._queue and waiting:
                    worker = waiting.popleft()
                    if worker.leaving or not worker.ready or (
                            worker.next_task is not None or worker.task is None if ahead else worker.task is not None):
                        continue
                    task = self._queue.popleft()
                    # a task put back (after a failed send, or from a dead worker's pipe) is already marked running
                    if task.future.running() or task.future.set_running_or_notify_cancel():
                        if ahead:
                            worker.next_task = task
                        else:
                            worker.task = task
                        pairs.append((worker, task, ahead))
                    else:
                        waiting.appendleft(worker)       # the task was cancelled: the worker is still free
        return pairs

    @staticmethod
    def _kill_overdue(workers):
        now = time.monotonic()
        for worker in workers:
            deadline = worker.deadline()
            if deadline is not None and deadline <= now:
                # the sentinel then reports the death, and the task (or the pool) fails as timed out
                worker.timed_out = True
                kill_process_group(worker.pid)

    def _send_tasks(self, pairs):
        for worker, task, ahead in pairs:
            if ahead:
                log.debug("task %d sent ahead to worker pid %d, which runs task %d", task.id, worker.pid,
                          worker.task.id)
            else:
                self._begin(worker, time.monotonic())
            try:
                message = ForkingPickler.dumps((task.id, task.fn, task.args, task.kwargs))
                if ahead and len(message) > _SEND_AHEAD_BYTES:
                    # too big to wait in the pipe: it goes when the worker is free
                    worker.next_task = None
                    self._put_back(task)
                    continue
                worker.conn.send_bytes(message)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                # the worker died just now: its sentinel will say so; another worker takes
                # the task, unless queued tasks were given up meanwhile (terminate)
                self._unpair(worker, ahead)
                self._put_back(task)
            except Exception as exc:
                self._unpair(worker, ahead)
                if not ahead:
                    self._idle.append(worker)
                _abandon(task.future, _unpicklable(exc, "the task's arguments"))

    def _begin(self, worker, now):
        """The worker begins its task (just sent, or found in its pipe): its time limit starts."""
        worker.task_began = now
        if worker.task.timeout is not None:
            worker.task.deadline = now + worker.task.timeout
        if worker.quick:
            self._ahead.append(worker)

    @staticmethod
    def _unpair(worker, ahead):
        if ahead:
            worker.next_task = None
        else:
            worker.task = None

    def _put_back(self, task):
        """Queue again, first, a task that never began: unless queued tasks were given up (terminate)."""
        with self._lock:
            if self._cancelled:
                _abandon(task.future, self._broken)
            else:
                self._queue.appendleft(task)

    def _reap_retired(self):
        for worker in [w for w in self._retiring if _has_exited(w.pid)]:
            self._retiring.remove(worker)
            self._reap(worker)

    def _read_messages(self, worker):
        """Handle every message waiting on a worker's pipe; False once the pipe is closed."""
        while worker in self._workers:
            try:
                if not worker.conn.poll():
                    return True
            except (EOFError, OSError):
                return False
            if not self._read_one(worker):
                return False
        return True     # retired meanwhile: what follows is not read

    def _read_one(self, worker):
        """Read and handle one message from a worker's pipe (which has one); False once the pipe is closed."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False
        except Exception as exc:
            # The reply arrived whole but does not unpickle here (e.g. an exception class
            # whose __init__ takes other arguments): fail that task only, not the pool.
            error = TypeError(f"a reply from the worker could not be unpickled: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            task_id = worker.task.id if worker.task is not None else None
            message = ("error" if worker.ready else "init_error", task_id, error, "", False)
        self._handle_message(worker, message)
        return True

    def _handle_message(self, worker, message):
        kind, task_id, value, tb_text, replace = message
        if kind == "initializing":
            if worker.initializer_timeout is not None:
                worker.init_deadline = time.monotonic() + worker.initializer_timeout
        elif kind == "ready":
            worker.ready = True
            self._idle.append(worker)
        elif kind == "init_error":
            self._break(_with_remote_cause(
                WorkerInitializerError(f"the worker initializer raised {value!r}; no task can run"), tb_text))
        elif worker.task is None or task_id != worker.task.id:
            log.warning("dropped a reply from worker pid %d for task %s: it is running %s (a process forked by "
                        "the operation wrote on the worker's pipe?)", worker.pid, task_id,
                        "nothing" if worker.task is None else f"task {worker.task.id}")
        else:
            now = time.monotonic()
            task, worker.task, worker.next_task = worker.task, worker.next_task, None
            # sent ahead only while the worker would not be retired for the items it ran
            worker.quick = (now - worker.task_began < self._send_ahead_below and self._max_items_per_worker is None)
            if worker.task is not None:
                self._begin(worker, now)
            else:
                self._idle.append(worker)
            worker.items_run += task.weight
            if kind == "ok":
                _settle(task.future, result=value)
            elif replace:
                _settle(task.future, exc=WorkerPoisonedError(_with_remote_cause(value, tb_text)))
            else:
                _settle(task.future, exc=_with_remote_cause(value, tb_text))
            if replace or (self._max_items_per_worker is not None
                           and worker.items_run >= self._max_items_per_worker):
                self._retire(worker, "its operation ran out of memory or file descriptors" if replace
                             else f"it ran {worker.items_run} items (max_items_per_worker)")

    def _retire(self, worker, why):
        """Ask a worker to leave after its task; a new one takes its place when needed."""
        log.info("replacing worker pid %d: %s", worker.pid, why)
        worker.leaving = True
        with self._lock:
            self._workers.remove(worker)
        self._retiring.append(worker)
        # what it says from now on is not read; its end is looked for
        self._unwatch(worker)
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("retired", worker))
        if worker.task is not None:
            # a task sent ahead (only a poisoned worker is retired with one): a worker that asks
            # to be replaced leaves without beginning another task (worker._serve), so the
            # task runs in another one; the kill makes sure it leaves now
            task, worker.task = worker.task, None
            kill_process_group(worker.pid)
            self._put_back(task)
            return
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            kill_process_group(worker.pid)

    def _handle_death(self, worker):
        worker.leaving = True
        exitcode, pid = self._reap(worker)
        if not worker.ready:
            if worker.timed_out:
                self._break(WorkerInitializerError(
                    f"the worker initializer did not finish within initializer_timeout="
                    f"{self._initializer_timeout:g} s (worker pid {pid} killed); no task can run. Give it "
                    f"longer with AutoparaInfo(initializer_timeout=...), which defaults to timeout"))
            else:
                self._break(WorkerInitializerError(
                    f"a worker process (pid {pid}) died with {describe_exitcode(exitcode)} before its "
                    f"initializer finished; no task can run"))
        if worker.task is not None:
            died = TaskTimeoutError(worker.task.timeout, pid) if worker.timed_out else WorkerDiedError(exitcode, pid)
            _settle(worker.task.future, exc=died)
            worker.task = None
        if worker.next_task is not None:
            # still in its pipe, never begun: another worker runs it
            self._put_back(worker.next_task)
            worker.next_task = None
        with self._lock:
            self._workers.remove(worker)
        log.info("worker pid %d died (%s)", pid, describe_exitcode(exitcode))

    def _reap(self, worker, grace=_LEAVE_TIMEOUT):
        """Wait for a worker to end (killing it after ``grace`` seconds), kill what is left of
        its process group, and reap it; its ``(exitcode, pid)``."""
        # waiting does not reap the worker, and while it is unreaped its pid (the group's id)
        # cannot be reused: the group kill cannot hit another process
        if not _wait_for_exit(worker, grace):
            # its pipe closed but the process lingers (threads of its own), or it does not leave
            kill_process_group(worker.pid)
        kill_process_group(worker.pid, alone_too=False)      # what the operation started and left running
        self._unwatch(worker)
        worker.process.join()
        worker.conn.close()
        self._guardian.forget(worker.pid)
        return worker.process.exitcode, worker.pid

    def _break(self, exc):
        with self._lock:
            if self._broken is None:
                self._broken = exc
            self._shutting_down = self._cancelled = True
            self._abandon_queue(exc)
            running = [w for w in self._workers if w.task is not None]
        for worker in running:
            for task in (worker.task, worker.next_task):
                if task is not None:
                    _settle(task.future, exc=exc)
            worker.task = worker.next_task = None

    def _stop_workers(self, workers, timeout):
        """Ask workers to leave, wait at most ``timeout`` seconds for all of them, then kill the rest."""
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for worker in workers:
            # one still in its initializer reads nothing yet: it is not waited for
            grace = max(0.0, deadline - time.monotonic()) if worker.ready else 0.0
            self._reap(worker, grace=grace)


def _wait_for_exit(worker, timeout):
    """Whether the worker ended within ``timeout`` seconds; it is left unreaped.

    Its sentinel alone does not say: a process the operation forked inherits the
    sentinel's write end, and keeps it from being ready while it lingers.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _has_exited(worker.pid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        wait([worker.sentinel], timeout=min(_EXIT_POLL, remaining))


def _has_exited(pid):
    if not hasattr(os, "waitid"):
        return False        # only the sentinel can tell
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True         # already reaped (multiprocessing reaps ended children when it starts one)


def _time_to_next_deadline(workers):
    """Seconds until the next worker is due to be killed (at most ``_MAX_WAIT``), or None."""
    deadlines = [d for d in (w.deadline() for w in workers) if d is not None]
    if not deadlines:
        return None
    # a limit of inf or 1e10 s is accepted: never hand wait() more than it takes
    return min(_MAX_WAIT, max(0.0, min(deadlines) - time.monotonic()))


class _PickledResultFuture(Future):
    """A future whose result comes from a worker pickled, and is unpickled where it is asked for.

    So the dispatcher, which receives it, is free at once to give the worker its next task:
    unpickling a chunk of structures takes longer than its trip.  A result that does not
    unpickle here is raised by :meth:`result` as a :class:`TypeError` naming why;
    :meth:`exception` tells only how the task itself ended, so that a callback asking it
    (in the dispatcher's thread) does not unpickle the result there.
    """

    _decoded = False
    _value = _error = None

    def result(self, timeout=None):
        raw = super().result(timeout)
        with self._condition:
            if not self._decoded:
                try:
                    self._value = pickle.loads(raw)
                except (Exception, SystemExit) as exc:
                    # SystemExit too: the output's, not a stop of the caller's program
                    self._error = TypeError(f"a reply from the worker could not be unpickled: "
                                            f"{type(exc).__name__}: {exc}")
                    self._error.__cause__ = exc
                self._decoded = True
        if self._error is not None:
            raise self._error
        return self._value


def _settle(future, result=None, exc=None):
    """Complete a future unless it already is (cancelled, or failed by a broken pool)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _abandon(future, exc):
    """Fail a task that will not run: with ``exc``, or as cancelled when ``exc`` is None."""
    if exc is None:
        if not future.cancel():
            _settle(future, exc=CancelledError())   # already marked running
    elif future.running() or future.set_running_or_notify_cancel():
        _settle(future, exc=exc)


def _with_remote_cause(exc, tb_text):
    if tb_text:
        exc.__cause__ = RemoteTraceback(f"\n\"\"\"\n{tb_text}\"\"\"")
    return exc


def _unpicklable(exc, what):
    error = TypeError(f"could not send {what} to a worker process: {type(exc).__name__}: {exc}; "
                      f"everything the operation receives must be picklable")
    error.__cause__ = exc
    return error
