"""A process pool that notices a dead worker at once and loses nothing else.

Like :class:`concurrent.futures.ProcessPoolExecutor`, a thread of the driver waits on
every worker's result pipe *and* its process sentinel, so a worker that dies (signal,
``os._exit``, segfault, out-of-memory kill) is seen at once and its task's future
fails with :class:`~wfl_like.errors.WorkerDiedError` naming the exit code.  Unlike it,
each worker has its own pipe, so the pool knows which task the dead worker ran, fails
only that one, and starts a replacement: the other workers and their tasks carry on.
"""

import collections
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from concurrent.futures import Executor, Future
from multiprocessing.connection import wait

from wfl_like.errors import WorkerDiedError, WorkerInitializerError

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


def default_context():
    """``fork`` where there is one (workers inherit the operation, as with wfl), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class _Task:
    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future, fn, args, kwargs):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


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
        self.task = None          # the _Task being run

    @property
    def sentinel(self):
        return self.process.sentinel


class WorkerPool(Executor):
    """A :class:`concurrent.futures.Executor` over worker processes that survive each other's death.

    Parameters
    ----------
    max_workers : int
        Number of worker processes, kept constant: a dead worker is replaced.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each worker when it starts.  If it
        raises, the pool is broken: every future fails with
        :class:`~wfl_like.errors.WorkerInitializerError`.
    initargs : tuple
    mp_context : multiprocessing context, optional
        Default: :func:`default_context`.
    """

    def __init__(self, max_workers, *, initializer=None, initargs=(), mp_context=None):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        self._ctx = mp_context or default_context()
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._queue = collections.deque()
        self._shutting_down = False
        self._broken = None
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        # Workers are started before the dispatcher thread so that the first forks
        # happen while the driver has a single thread.
        self._workers = []
        for _ in range(max_workers):
            self._workers.append(self._start_worker())
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
        return [w.process.pid for w in self._workers]

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._shutting_down:
                raise RuntimeError("cannot submit to a WorkerPool after shutdown")
            self._queue.append(_Task(future, fn, args, kwargs))
        self._wake()
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutting_down = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
        self._wake()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def terminate(self):
        """Stop now: kill every worker, fail running and queued tasks, and wait for the dispatcher."""
        with self._lock:
            self._shutting_down = True
            while self._queue:
                self._queue.popleft().future.cancel()
            for worker in self._workers:
                _kill(worker.process)
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _wake(self):
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass     # the dispatcher already left and closed the pipe

    # --- the dispatcher thread --------------------------------------------------------

    def _dispatch_loop(self):
        try:
            while True:
                with self._lock:
                    self._assign_tasks()
                    if self._shutting_down and not self._queue and not any(w.task for w in self._workers):
                        break
                waitables = [self._wake_r] + [w.conn for w in self._workers] + [w.sentinel for w in self._workers]
                for ready in wait(waitables):
                    if ready is self._wake_r:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    else:
                        self._handle_ready(ready)
        except BaseException as exc:    # a bug here must not leave the caller waiting forever
            log.exception("wfl_like pool dispatcher failed")
            self._break(RuntimeError(f"the worker pool's dispatcher failed: {exc!r}"))
        finally:
            self._stop_workers()
            self._wake_r.close()
            self._wake_w.close()

    def _assign_tasks(self):
        idle = [w for w in self._workers if w.task is None and w.process.is_alive()]
        while idle and self._queue:
            task = self._queue.popleft()
            # a task put back after a failed send is already marked running
            if not task.future.running() and not task.future.set_running_or_notify_cancel():
                continue
            worker = idle.pop()
            try:
                worker.conn.send((task.fn, task.args, task.kwargs))
            except (BrokenPipeError, ConnectionResetError, EOFError):
                # the worker died just now: its sentinel will say so; another worker takes the task
                self._queue.appendleft(task)
            except Exception as exc:
                task.future.set_exception(_unpicklable(exc, "the task's arguments"))
                idle.append(worker)
            else:
                worker.task = task

    def _handle_ready(self, ready):
        worker = next((w for w in self._workers if ready is w.conn or ready is w.sentinel), None)
        if worker is None:
            return
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
                message = ("error" if worker.task is not None else "init_error", error, "")
            if message is not None:
                self._handle_message(worker, message)
                return
        self._handle_death(worker)

    def _handle_message(self, worker, message):
        kind = message[0]
        if kind == "init_error":
            self._break(_with_remote_cause(
                WorkerInitializerError(f"the worker initializer raised {message[1]!r}; no task can run"),
                message[2]))
            return
        future = worker.task.future
        worker.task = None
        if kind == "ok":
            future.set_result(message[1])
        else:
            future.set_exception(_with_remote_cause(message[1], message[2]))

    def _handle_death(self, worker):
        worker.process.join()
        exitcode = worker.process.exitcode
        worker.conn.close()
        with self._lock:
            self._workers.remove(worker)
            if worker.task is not None and not worker.task.future.done():
                worker.task.future.set_exception(WorkerDiedError(exitcode, worker.process.pid))
            if not self._shutting_down and self._broken is None:
                log.info("worker pid %d died (%s); starting a replacement", worker.process.pid, exitcode)
                self._workers.append(self._start_worker())

    def _break(self, exc):
        with self._lock:
            self._broken = exc
            self._shutting_down = True
            while self._queue:
                future = self._queue.popleft().future
                if future.running() or future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            for worker in self._workers:
                if worker.task is not None and not worker.task.future.done():
                    worker.task.future.set_exception(exc)
                worker.task = None

    def _stop_workers(self):
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(_LEAVE_TIMEOUT)
            if worker.process.is_alive():
                _kill(worker.process)
                worker.process.join()
            worker.conn.close()


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


def _send(conn, reply):
    try:
        conn.send(reply)
    except (OSError, EOFError):
        raise
    except Exception as exc:
        # the result or the exception does not pickle: send what can be said of it
        what = "result" if reply[0] == "ok" else "exception"
        error = TypeError(f"the operation's {what} could not be sent back from the worker: "
                          f"{type(exc).__name__}: {exc}")
        conn.send(("error", error, reply[2] if len(reply) > 2 else ""))


def _error_message(kind, exc):
    return (kind, exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
