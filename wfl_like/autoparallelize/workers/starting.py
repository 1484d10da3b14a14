"""One lock around every start of a child process by this process (worker forks, the guardian).

Calls may run at the same time in threads of one driver (``autopara_info={"wait": False}``).
A child forked by one thread while another thread is inside ``subprocess.Popen`` keeps
Popen's error pipe open (a fork does not exec, so close-on-exec does not close it), and
Popen then waits on that pipe for as long as the child lives; a child forked between
another pool's fork and that pool's closing of its end of the worker's pipe keeps the
pipe open, so the other pool would not see its worker die by the pipe.  Starting
children one at a time, with the parent's cleanup inside the lock, closes both windows.

A forked child also starts with the parent's objects frozen (:func:`frozen_for_fork`).
"""

import contextlib
import gc
import threading

START_LOCK = threading.Lock()


@contextlib.contextmanager
def frozen_for_fork(method):
    """Fork with every object of this process moved out of the collector's reach in the child.

    A forked worker inherits the whole heap of the driver (ASE, numpy, scipy and the
    caller's data); each full collection in the worker would walk all of it, writing to
    its pages, which the fork then copies.  Frozen (:func:`gc.freeze`), the worker's
    collections see only what it makes itself (1-2 % of a cheap operation's time).  The
    parent is thawed again at once, so its collector works as before; a process that froze
    objects itself is left as it is.  In the worker, what it inherited is out of the
    collector's searches too (``gc.get_objects``, ``gc.get_referrers``): an operation that
    inspects the heap that way calls ``gc.unfreeze()`` first.
    """
    if method != "fork" or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
