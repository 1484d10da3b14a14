"""How far a call got: a progress bar where a person watches, log lines always.

The bar (``tqdm.auto``: a terminal line, or a widget in a notebook) shows items done of
the total where it is known (frames of input files, inputs with a length), the rate,
the time left and the items failed so far; for queued jobs also how many jobs are in
each state.  It is drawn when ``autopara_info["progress"]`` says so, else when the env
var ``WFL_LIKE_PROGRESS`` (``0`` or ``1``) does, else when standard error is a terminal
or the call runs in a notebook, and never inside a worker process.  The log
(``wfl_like.progress``, INFO) keeps its start and summary lines for batch jobs.
"""

import logging
import os
import sys
import threading
import time

PROGRESS_ENV = "WFL_LIKE_PROGRESS"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

log = logging.getLogger("wfl_like.progress")


def show_bar(option):
    """Whether a call draws a progress bar: ``option``, else ``$WFL_LIKE_PROGRESS``, else whether a
    person is watching (a terminal on stderr, or a notebook).

    Raises
    ------
    ValueError
        The env var holds something other than a yes or a no; the message names it.
    """
    if option is not None:
        return option
    text = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if text in _YES or text in _NO:
        return text in _YES
    if text:
        raise ValueError(f"environment variable {PROGRESS_ENV}={text!r} is not 0 or 1; set it to 1 to draw "
                         f"progress bars, 0 to leave them out (or unset it: drawn on a terminal)")
    return _in_notebook() or _stderr_is_terminal()


def _stderr_is_terminal():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _in_notebook():
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = getattr(shell, "get_ipython", lambda: None)()
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def public_name(op_name):
    """What a user calls an operation: ``wfl_like.calculators.generic._calculate_op`` is ``calculate``."""
    name = op_name.rsplit(".", 1)[-1].strip("_")
    if name.endswith("_op") and len(name) > 3:
        name = name[:-3]
    return name or op_name


class Progress:
    """Counts a call's items as their chunks come back; logs every ``interval`` s, and draws a bar.

    Parameters
    ----------
    op_name : str
        The operation (``module.qualname``): the log names it so, the bar by its public name.
    total : int, optional
        Items of the call, where known.
    bar : bool, default False
        Draw a ``tqdm`` bar.
    interval : float, default 10
        Seconds between log lines.
    """

    def __init__(self, op_name, total=None, bar=False, interval=10.0):
        self.op_name, self.total, self.interval = op_name, total, interval
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=public_name(op_name), unit="item", dynamic_ncols=True,
                             smoothing=0.1, file=sys.stderr)
            # log lines written to the console while the bar is drawn go above it, not through it
            _console.enter()

    def advance(self, n, failed):
        """Count ``n`` more items, ``failed`` of them failed."""
        self.done += n
        self.failed += failed
        if self._bar is not None:
            if failed:
                self._bar.set_postfix_str(f"{self.failed} failed", refresh=False)
            self._bar.update(n)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            of = f"/{self.total}" if self.total is not None else ""
            log.info("%s: %d%s items done (%d failed), %.1f items/s", self.op_name, self.done, of, self.failed,
                     self.done / (now - self.start))

    def jobs(self, summary):
        """Show how many queued jobs are in each state (``{state: count}``)."""
        if self._bar is not None:
            states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.items()))
            failed = f"{self.failed} failed, " if self.failed else ""
            self._bar.set_postfix_str(f"{failed}jobs: {states}")

    def finish(self):
        """Close the bar and log the summary line."""
        self.close()
        elapsed = time.monotonic() - self.start
        rate = f", {self.done / elapsed:.1f} items/s" if elapsed > 0 else ""
        log.info("%s: finished %d items (%d failed) in %.2f s%s", self.op_name, self.done, self.failed, elapsed,
                 rate)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            _console.leave()


class _AboveBars(logging.Handler):
    """Stands in the place of a console handler while bars are drawn: each record goes to that
    handler itself (its level, filters, formatter and stream as they are), with the bars cleared
    from the terminal while it writes and drawn again below."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def handle(self, record):
        if record.levelno < self.handler.level:
            return False
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.handler.stream):
            return self.handler.handle(record)


class _ConsoleHandlers:
    """The console handlers of the loggers, each wrapped in an :class:`_AboveBars` in its own
    place while at least one bar is drawn (calls may overlap: ``wait=False``), then put back
    where they were; handlers added or removed meanwhile are left as the caller made them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bars = 0
        self._wrapped = []      # (logger, wrapper)

    def enter(self):
        with self._lock:
            self._bars += 1
            if self._bars == 1:
                for logger in _loggers():
                    self._wrap_console_handlers(logger)

    def leave(self):
        with self._lock:
            self._bars -= 1
            if self._bars:
                return
            for logger, wrapper in self._wrapped:
                handlers = list(logger.handlers)
                if wrapper in handlers:
                    handlers[handlers.index(wrapper)] = wrapper.handler
                    logger.handlers = handlers
            self._wrapped = []

    def _wrap_console_handlers(self, logger):
        handlers = [_AboveBars(h) if _writes_to_console(h) else h for h in logger.handlers]
        wrappers = [h for h in handlers if isinstance(h, _AboveBars)]
        if wrappers:
            # a new list, swapped in whole: a record being handled in another thread sees the old one
            logger.handlers = handlers
            self._wrapped += [(logger, wrapper) for wrapper in wrappers]


_console = _ConsoleHandlers()


def _loggers():
    """The root logger and every other logger that has handlers of its own."""
    others = [logger for logger in logging.root.manager.loggerDict.values()
              if isinstance(logger, logging.Logger) and logger.handlers]
    return [logging.root, *others]


def _writes_to_console(handler):
    return (type(handler) is logging.StreamHandler
            and getattr(handler, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))
