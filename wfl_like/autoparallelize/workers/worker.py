"""The loop a pool worker process runs; nothing here runs in the driver.

The protocol over the worker's pipe: the driver sends ``(task_id, fn, args, kwargs)``
or ``None`` (leave); the worker answers ``(kind, task_id, value, traceback_text,
replace_me)`` with ``kind`` one of ``"initializing"``, ``"ready"``, ``"init_error"``,
``"ok"``, ``"error"``.  The value of an ``"ok"`` is the task's result pickled on its own:
the driver's dispatcher reads the reply and gives the worker its next task at once, and
the result is unpickled by whoever asks its future for it.
Every reply names the task it answers, so a reply that is not the worker's current
task's (a process the operation forked, speaking on the worker's pipe) can be told
and dropped.
"""

import ctypes
import errno
import os
import pickle
import signal
import sys
import traceback

from wfl_like.autoparallelize.workers.devices import enter_worker
from wfl_like.autoparallelize.workers.opcall import item_aborted
from wfl_like.autoparallelize.workers.threads import limit_loaded_libraries

# Failures after which a worker is not to be trusted with more work: out of memory, or
# out of file descriptors (EMFILE for this process, ENFILE for the whole system).
_POISONING_ERRNOS = (errno.EMFILE, errno.ENFILE)

_PR_SET_PDEATHSIG = 1


def worker_main(conn, initializer, initargs, inherited, index=None, environment=None, threads=None,
                loaded_libraries=None):
    """Run tasks from ``conn`` until told to leave or the driver is gone.

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        This worker's end of its pipe.
    initializer : callable or None
    initargs : tuple
    inherited : list
        Connections and file descriptors of the driver's that a forked worker inherited
        and must close (its siblings' pipes, the guardian's pipe), or none of them would
        see end-of-file when the driver dies.
    index : int, optional
        This worker's index (:func:`~wfl_like.autoparallelize.workers.devices.worker_index`).
    environment : dict of str to str, optional
        Variables to set in its environment (its ``CUDA_VISIBLE_DEVICES``, its thread
        limits), set before the initializer (which unpickles the operation) runs.
    threads : int, optional
        The most threads each native library this worker has loaded may use
        (:mod:`~wfl_like.autoparallelize.workers.threads`); None leaves them as they are.
    loaded_libraries : threadpoolctl.ThreadpoolController, optional
        The native libraries the driver had loaded when it forked this worker
        (:func:`~wfl_like.autoparallelize.workers.threads.loaded_libraries`); None: look here.
    """
    enter_worker(index, environment)
    if threads is not None:
        # a forked worker has the driver's libraries loaded already, with the driver's
        # thread counts: the variables just set come too late for them
        limit_loaded_libraries(threads, loaded_libraries)
    _lead_own_process_group()
    _die_with_parent()
    for other in inherited:
        _close(other)
    me = os.getpid()
    # a process the operation forks must not speak on this worker's pipe
    os.register_at_fork(after_in_child=lambda: _close(conn))
    # Ctrl-C is the driver's to handle: it stops the workers itself.  A forked worker
    # also inherits the driver's SIGTERM handler: take the default back, so SIGTERM
    # sent to this worker's group simply ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        # the initializer's time limit starts now, not while the interpreter was starting
        _send(conn, me, ("initializing", None, None, "", False))
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                _send(conn, me, _error_reply("init_error", None, exc))
                return
        _send(conn, me, ("ready", None, None, "", False))
        _serve(conn, me)
    except (EOFError, OSError):
        return      # the driver is gone: nobody to work for


def _serve(conn, me):
    while True:
        _only_in(me)
        message = conn.recv()
        if message is None:
            return
        task_id, fn, args, kwargs = message
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            reply = _error_reply("error", task_id, _as_item_failure(exc))
        else:
            reply = _ok_reply(task_id, result)
        _send(conn, me, reply)
        if reply[4]:
            # out of memory or descriptors: it is replaced, and must not begin a task the
            # driver sent ahead (that task runs in another worker)
            return


def _ok_reply(task_id, result):
    try:
        return "ok", task_id, pickle.dumps(result, pickle.HIGHEST_PROTOCOL), "", False
    except Exception as exc:
        # the result does not pickle: say what can be said of it
        error = TypeError(f"the operation's result could not be sent back from the worker: "
                          f"{type(exc).__name__}: {exc}")
        return _error_reply("error", task_id, error)


def _only_in(me):
    """End a process forked by the operation that came back into this loop: it is not the worker."""
    if os.getpid() != me:
        os._exit(0)


def _as_item_failure(exc):
    """A BaseException that is not an Exception, raised by the operation, as an Exception.

    A KeyboardInterrupt in a worker is not a Ctrl-C (workers ignore SIGINT): it came
    from the operation, and must fail its item, not stop the driver.
    """
    if isinstance(exc, Exception):
        return exc
    error = item_aborted(exc)
    error.__cause__ = exc
    return error


def poisons_worker(exc):
    """Whether ``exc``, or an exception in its chain, says its process is out of memory or fds."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, OSError) and exc.errno in _POISONING_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _error_reply(kind, task_id, exc):
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (kind, task_id, exc, tb_text, poisons_worker(exc))


def _send(conn, me, reply):
    _only_in(me)
    try:
        conn.send(reply)
    except (OSError, EOFError):
        raise
    except Exception as exc:
        # the exception does not pickle: send what can be said of it
        kind, task_id, value, tb_text, replace = reply
        error = TypeError(f"the operation's exception {value!r} could not be sent back from the worker: "
                          f"{type(exc).__name__}: {exc}")
        conn.send((kind, task_id, error, tb_text, replace))


def _close(thing):
    try:
        if isinstance(thing, int):
            os.close(thing)
        else:
            thing.close()
    except OSError:
        pass


def _lead_own_process_group():
    """Make this worker the leader of a new session and process group.

    Whatever the operation starts joins that group, so killing the group (timeout,
    driver gone) ends the operation's programs with their worker.
    """
    try:
        os.setsid()
    except OSError:
        pass        # already a group leader (not a process we started): leave it as it is


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
