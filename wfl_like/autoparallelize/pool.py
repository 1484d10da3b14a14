"""A process pool that notices a dead worker at once and loses nothing else.

Like :class:`concurrent.futures.ProcessPoolExecutor`, a thread of the driver waits on
every worker's result pipe *and* its process sentinel, so a worker that dies (signal,
``os._exit``, segfault, out-of-memory kill) is seen at once and its task's future
fails with :class:`~wfl_like.errors.WorkerDiedError` naming the exit code.  Unlike it,
each worker has its own pipe, so the pool knows which task the dead worker ran, fails
only that one, and starts a replacement: the other workers and their tasks carry on.
"""

import collections
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import CancelledError, Executor, Future
from multiprocessing.connection import wait

from wfl_like.errors import TaskTimeoutError, WorkerDiedError, WorkerInitializerError, describe_exitcode

log = logging.getLogger(__name__)

# How long workers get to leave after being asked before they are terminated.
_LEAVE_TIMEOUT = 5.0


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
    __slots__ = ("future", "fn", "args", "kwargs", "timeout", "deadline")

    def __init__(self, future, fn, args, kwargs, timeout=None):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs
        self.timeout = timeout
        self.deadline = None      # set when the task reaches a worker


class _Worker:
    def __init__(self, ctx, initializer, initargs, inherited):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        if ctx.get_start_method() == "fork":
            # the forked child also gets the driver's end of its own pipe: unless it closes
            # it, its recv() never sees end-of-file when the driver dies
            inherited = list(inherited) + [self.conn]
        self.process = ctx.Process(target=_worker_main, args=(child_conn, initializer, initargs, inherited),
                                   daemon=True, name="wfl_like-worker")
        self.process.start()
        child_conn.close()
        self.ready = False        # the initializer has run; tasks may be sent
        self.task = None          # the _Task being run
        self.timed_out = False    # killed because its task ran past its deadline

    @property
    def sentinel(self):
        return self.process.sentinel


class WorkerPool(Executor):
    """A :class:`concurrent.futures.Executor` over worker processes that survive each other's death.

    Parameters
    ----------
    max_workers : int
        Number of worker processes, kept constant: a worker that dies while running a
        task is replaced.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each worker when it starts.  If it
        raises or kills its worker, the pool is broken: every future fails with
        :class:`~wfl_like.errors.WorkerInitializerError`.
    initargs : tuple
    mp_context : multiprocessing context, optional
        Default: :func:`default_context`.

    Notes
    -----
    On Linux a worker is killed by the kernel when the thread that started it ends
    (``PR_SET_PDEATHSIG``), so that no worker outlives a killed driver.  Create the
    pool in a thread that outlives it (the first workers are started by the thread
    that creates the pool, replacements by the pool's own thread).
    """

    def __init__(self, max_workers, *, initializer=None, initargs=(), mp_context=None):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        self._ctx = mp_context or default_context()
        self._initializer, self._initargs = initializer, tuple(initargs)
        # The lock guards what submit(), shutdown() and terminate() share with the
        # dispatcher: the queue, the flags and the list of workers.  Only the dispatcher
        # talks to workers, and never while holding it.
        self._lock = threading.Lock()
        self._queue = collections.deque()
        self._shutting_down = False
        self._cancelled = False     # queued tasks are not to run (terminate, cancel_futures, broken)
        self._broken = None
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        # Workers are started before the dispatcher thread so that the first forks
        # happen while the driver has a single thread.
        self._workers = []
        try:
            for _ in range(max_workers):
                self._workers.append(self._start_worker())
        except BaseException:
            self._stop_workers(self._workers, timeout=0)
            raise
        self._thread = threading.Thread(target=self._dispatch_loop, name="wfl_like-pool-dispatcher",
                                        daemon=True)
        self._thread.start()

    def _start_worker(self):
        # A forked worker inherits the driver's ends of its siblings' pipes; it must close
        # them, or a sibling would never see end-of-file when the driver dies.
        inherited = []
        if self._ctx.get_start_method() == "fork":
            inherited = [w.conn for w in self._workers] + [self._wake_r, self._wake_w]
        return _Worker(self._ctx, self._initializer, self._initargs, inherited)

    @property
    def pids(self):
        """Process ids of the current workers."""
        with self._lock:
            return [w.process.pid for w in self._workers]

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` in a worker; returns a :class:`~concurrent.futures.Future`."""
        return self.submit_with_timeout(None, fn, *args, **kwargs)

    def submit_with_timeout(self, timeout, fn, /, *args, **kwargs):
        """Like :meth:`submit`, but a task still running ``timeout`` seconds after it reached
        a worker has that worker killed (and replaced); its future fails with
        :class:`~wfl_like.errors.TaskTimeoutError`.  ``None`` means no limit.
        """
        future = Future()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._shutting_down:
                raise RuntimeError("cannot submit to a WorkerPool after shutdown")
            self._queue.append(_Task(future, fn, args, kwargs, timeout))
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
            for worker in self._workers:
                _kill(worker.process)
        self._wake()
        self._join()

    def _join(self):
        if self._thread is threading.current_thread():
            return
        self._thread.join()
        # closed only now: closing while another thread writes could hit a reused descriptor
        self._wake_r.close()
        self._wake_w.close()

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
                self._send_tasks(self._pair_tasks())
                with self._lock:
                    idle = not any(w.task for w in self._workers)
                    # queued tasks keep a shutting-down pool going only while a worker is
                    # left to run them (dead workers are replaced while tasks are queued)
                    if self._shutting_down and idle and (not self._queue or not self._workers):
                        self._abandon_queue(self._broken)
                        break
                    workers = list(self._workers)
                waitables = [self._wake_r] + [w.conn for w in workers] + [w.sentinel for w in workers]
                for ready in wait(waitables, timeout=self._time_to_next_deadline(workers)):
                    if ready is self._wake_r:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    else:
                        self._handle_ready(ready)
                self._kill_overdue(workers)
        except BaseException as exc:    # a bug here must not leave the caller waiting forever
            log.exception("wfl_like pool dispatcher failed")
            self._break(RuntimeError(f"the worker pool's dispatcher failed: {exc!r}"))
        finally:
            with self._lock:
                workers, self._workers = self._workers, []
            self._stop_workers(workers, timeout=_LEAVE_TIMEOUT)

    def _pair_tasks(self):
        """Take queued tasks for idle ready workers: ``[(worker, task), ...]``."""
        pairs = []
        with self._lock:
            for worker in self._workers:
                while self._queue and worker.ready and worker.task is None:
                    task = self._queue.popleft()
                    # a task put back after a failed send is already marked running
                    if task.future.running() or task.future.set_running_or_notify_cancel():
                        worker.task = task
                        pairs.append((worker, task))
        return pairs

    @staticmethod
    def _time_to_next_deadline(workers):
        deadlines = [w.task.deadline for w in workers if w.task is not None and w.task.deadline is not None
                     and not w.timed_out]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    @staticmethod
    def _kill_overdue(workers):
        now = time.monotonic()
        for worker in workers:
            task = worker.task
            if task is not None and task.deadline is not None and task.deadline <= now and not worker.timed_out:
                # the sentinel then reports the death, and the task fails as timed out
                worker.timed_out = True
                _kill(worker.process)

    def _send_tasks(self, pairs):
        for worker, task in pairs:
            if task.timeout is not None:
                task.deadline = time.monotonic() + task.timeout
            try:
                worker.conn.send((task.fn, task.args, task.kwargs))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                # the worker died just now: its sentinel will say so; another worker takes
                # the task, unless queued tasks were given up meanwhile (terminate)
                worker.task = None
                with self._lock:
                    if self._cancelled:
                        _abandon(task.future, self._broken)
                    else:
                        self._queue.appendleft(task)
            except Exception as exc:
                worker.task = None
                _abandon(task.future, _unpicklable(exc, "the task's arguments"))

    def _handle_ready(self, ready):
        worker = next((w for w in self._workers if ready is w.conn or ready is w.sentinel), None)
        if worker is None:
            return      # already handled: its pipe and its sentinel were both ready
        if ready is worker.conn:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                message = None
            except Exception as exc:
                # The reply arrived whole but does not unpickle here (e.g. an exception class
                # whose __init__ takes other arguments): fail that task only, not the pool.
                error = TypeError(f"a reply from the worker could not be unpickled: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                message = ("error" if worker.ready else "init_error", error, "")
            if message is not None:
                self._handle_message(worker, message)
                return
        self._handle_death(worker)

    def _handle_message(self, worker, message):
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "init_error":
            self._break(_with_remote_cause(
                WorkerInitializerError(f"the worker initializer raised {message[1]!r}; no task can run"),
                message[2]))
        elif worker.task is not None:
            future, worker.task = worker.task.future, None
            if kind == "ok":
                _settle(future, result=message[1])
            else:
                _settle(future, exc=_with_remote_cause(message[1], message[2]))

    def _handle_death(self, worker):
        worker.process.join(_LEAVE_TIMEOUT)
        if worker.process.is_alive():
            # its pipe closed but the process lingers (threads of its own): finish it
            _kill(worker.process)
            worker.process.join()
        worker.conn.close()
        exitcode, pid = worker.process.exitcode, worker.process.pid
        if not worker.ready:
            self._break(WorkerInitializerError(
                f"a worker process (pid {pid}) died with {describe_exitcode(exitcode)} before its "
                f"initializer finished; no task can run"))
        if worker.task is not None:
            died = TaskTimeoutError(worker.task.timeout, pid) if worker.timed_out else WorkerDiedError(exitcode, pid)
            _settle(worker.task.future, exc=died)
            worker.task = None
        with self._lock:
            self._workers.remove(worker)
            # after shutdown(), only while tasks wait that no other worker would run
            replace = not self._cancelled and (not self._shutting_down or bool(self._queue))
        if replace:
            log.info("worker pid %d died (%s); starting a replacement", pid, describe_exitcode(exitcode))
            replacement = self._start_worker()
            with self._lock:
                cancelled = self._cancelled
                if not cancelled:
                    self._workers.append(replacement)
            if cancelled:
                # terminate() came while it started: it is not needed, and nobody else will stop it
                self._stop_workers([replacement], timeout=0)

    def _break(self, exc):
        with self._lock:
            if self._broken is None:
                self._broken = exc
            self._shutting_down = self._cancelled = True
            self._abandon_queue(exc)
            running = [w for w in self._workers if w.task is not None]
        for worker in running:
            _settle(worker.task.future, exc=exc)
            worker.task = None

    @staticmethod
    def _stop_workers(workers, timeout):
        """Ask workers to leave, wait at most ``timeout`` seconds for all of them, then kill the rest."""
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill(worker.process)
                worker.process.join()
            worker.conn.close()


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


def _kill(process):
    try:
        os.kill(process.pid, signal.SIGKILL)
    except (ProcessLookupError, TypeError):
        pass


def _with_remote_cause(exc, tb_text):
    if tb_text:
        exc.__cause__ = RemoteTraceback(f"\n\"\"\"\n{tb_text}\"\"\"")
    return exc


def _unpicklable(exc, what):
    error = TypeError(f"could not send {what} to a worker process: {type(exc).__name__}: {exc}; "
                      f"everything the operation receives must be picklable")
    error.__cause__ = exc
    return error


def _worker_main(conn, initializer, initargs, inherited):
    _die_with_parent()
    for other in inherited:
        other.close()
    # Ctrl-C is the driver's to handle: it stops the workers itself.  A forked worker
    # also inherits the driver's SIGTERM handler: take the default back, so SIGTERM
    # sent to the whole process group (a scheduler, `timeout`) simply ends the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                _send(conn, _error_message("init_error", exc))
                return
        conn.send(("ready",))
        while True:
            message = conn.recv()
            if message is None:
                return
            fn, args, kwargs = message
            try:
                reply = ("ok", fn(*args, **kwargs))
            except BaseException as exc:
                reply = _error_message("error", exc)
            _send(conn, reply)
    except (EOFError, OSError):
        return      # the driver is gone: nobody to work for


def _die_with_parent():
    """Have the kernel kill this worker when the driver dies (Linux), even mid-task.

    Without it, a worker busy in a long calculation when the driver is killed (a
    scheduler's SIGKILL) would run on, orphaned, until its task ends.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        os._exit(1)       # the driver died before prctl took effect


_PR_SET_PDEATHSIG = 1


def _send(conn, reply):
    try:
        conn.send(reply)
    except (OSError, EOFError):
        raise
    except Exception as exc:
        # the result or the exception does not pickle: send what can be said of it
        kind = "error" if reply[0] == "ok" else reply[0]
        what = "result" if reply[0] == "ok" else f"exception {reply[1]!r}"
        error = TypeError(f"the operation's {what} could not be sent back from the worker: "
                          f"{type(exc).__name__}: {exc}")
        conn.send((kind, error, reply[2] if len(reply) > 2 else ""))


def _error_message(kind, exc):
    return (kind, exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
