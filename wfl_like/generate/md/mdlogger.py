"""ASE's MD logger attached to each trajectory, one log per structure: :class:`LoggerSetup`."""

import inspect
import sys

from ase.md.logger import MDLogger

STDOUT = "-"


class LoggerSetup:
    """What md's ``logger_interval`` and ``logger_kwargs`` ask for, checked once.

    Parameters
    ----------
    interval : int
        Log every this many steps; 0 for no log.
    kwargs : dict or None
        Keyword arguments of the logger; ``"logger"`` gives its class (default
        :class:`ase.md.MDLogger`), ``"logfile"`` a file name to which
        ``".config_<item index>"`` is added (default ``"-"``: standard output, each line
        starting with ``"config <item index> "``).

    Raises
    ------
    ValueError, TypeError
        A bad interval or kwargs.
    """

    def __init__(self, interval=0, kwargs=None):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"logger_interval must be a whole number >= 0 (0: no log), not {interval!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"logger_kwargs must be a dict or None, not {type(kwargs).__name__}")
        kwargs = dict(kwargs or {})
        self.interval = interval
        self.constructor = kwargs.pop("logger", MDLogger)
        self.logfile = kwargs.pop("logfile", STDOUT)
        for name in ("dyn", "atoms"):
            if name in kwargs:
                raise ValueError(f"logger_kwargs must not set {name!r}: md gives the logger each trajectory's own")
        if not callable(self.constructor):
            raise TypeError(f"logger_kwargs['logger'] must be a logger class such as ase.md.MDLogger, "
                            f"not {self.constructor!r}")
        if not isinstance(self.logfile, str):
            raise TypeError(f"logger_kwargs['logfile'] must be a file name or '-', not {self.logfile!r}")
        _check_logger_keywords(self.constructor, kwargs)
        self.kwargs = kwargs

    def attach(self, dynamics, atoms, item_i, closing):
        """Attach a logger of structure ``item_i`` to ``dynamics``; its file is closed by ``closing``
        (a :class:`contextlib.ExitStack`)."""
        if self.interval == 0:
            return
        if self.logfile == STDOUT:
            stream = PrefixedStream(sys.stdout, f"config {item_i} ")
        else:
            # "w": a rerun of the item (a retry, a resumed run) starts its log afresh
            stream = closing.enter_context(open(f"{self.logfile}.config_{item_i}", "w", encoding="utf-8"))
        logger = self.constructor(dyn=dynamics, atoms=atoms, logfile=stream, **self.kwargs)
        dynamics.attach(logger, interval=self.interval)


def _check_logger_keywords(constructor, kwargs):
    """Refuse, before any work, keyword arguments the logger does not take (each trajectory
    would fail on them)."""
    try:
        signature = inspect.signature(constructor)
    except (TypeError, ValueError):
        return      # a signature Python cannot read: the logger itself will say
    try:
        signature.bind_partial(dyn=None, atoms=None, logfile=None, **kwargs)
    except TypeError as error:
        name = getattr(constructor, "__qualname__", repr(constructor))
        raise TypeError(f"logger_kwargs {sorted(kwargs)} do not fit logger {name}: {error}") from None


class PrefixedStream:
    """A text stream that writes each line to ``stream`` after ``prefix``; closing it leaves ``stream`` open."""

    def __init__(self, stream, prefix):
        self.stream, self.prefix = stream, prefix
        self.at_line_start = True

    def write(self, text):
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self):
        self.stream.flush()

    def close(self):
        self.flush()
