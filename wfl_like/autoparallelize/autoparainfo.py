"""Options that control how an operation is parallelized."""

import os

_DEFAULTS = {
    "num_python_subprocesses": None,
    "num_inputs_per_python_subprocess": 1,
    "iterable_arg": 0,
    "skip_failed": True,
    "initializer": (None, ()),
    "errors": "raise",
    "retries": 2,
    "timeout": None,
    "initializer_timeout": None,
    "max_items_per_worker": None,
    "fail_fast": True,
    "cache": None,
    "cache_extra": None,
    "executor": None,
    "workers_read_files": None,
    "remote_info": None,
    "progress": None,
    "wait": True,
}

WORKERS_READ_FILES_ENV = "WFL_LIKE_WORKERS_READ_FILES"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# options of wfl's remote job submission (ExPyRe) that wfl_like does not have:
# accepted when empty (wfl scripts pass None), refused otherwise.
_REMOTE_ONLY = ("remote_label", "hash_ignore")


class AutoparaInfo:
    """How to parallelize one call of an autoparallelized operation.

    Only the options given are stored, so that a value given by the caller wins over
    the wrapper's ``default_autopara_info``, which wins over the class default.

    Parameters
    ----------
    num_python_subprocesses : int, optional
        Worker processes; ``0`` runs in the calling process.  Default: the env var
        ``WFL_NUM_PYTHON_SUBPROCESSES``, else ``0``.
    num_inputs_per_python_subprocess : int or "auto", default 1
        Inputs passed to each call of the operation (a chunk).  ``"auto"`` sizes chunks
        as the run goes so that each takes about 0.2 s: cheap operations get large chunks
        (the round trip to a worker stops dominating), expensive ones keep chunks of one.
        Outputs are the same whatever the chunk size.
    iterable_arg : int or str, default 0
        Where the operation takes its list of inputs: a position among its positional
        arguments, or a keyword name.
    skip_failed : bool, default True
        An operation that returns ``None`` for an input leaves that input out of the
        outputs.  With ``False`` it is an error.
    initializer : (callable, sequence), default (None, ())
        ``func(*args)`` run once in each worker before any chunk (in the calling process
        when running serially), e.g. to load a potential once per worker.
    errors : {"raise", "skip"}, default "raise"
        What a failed item does once every other item is done: ``"raise"`` raises
        :class:`~wfl_like.errors.AutoparallelizeError` listing the failures (and writes no
        output file); ``"skip"`` leaves the failed items out of the outputs, warns with
        :class:`~wfl_like.errors.FailedItemsWarning`, and returns normally.
    retries : int, default 2
        How many more times an item whose worker died (signal, out-of-memory kill,
        segfault) is run, alone, before it counts as failed.
    timeout : float, optional
        Seconds an item may run; past that its worker is killed and replaced and the item
        fails as timed out.  Needs worker processes (ignored, with a warning, when serial).
    initializer_timeout : float, optional
        Seconds the initializer may take in a worker; past that the call fails with
        :class:`~wfl_like.errors.WorkerInitializerError`.  Default: ``timeout`` when it is
        set and an initializer is given, else no limit.  Needs worker processes.
    max_items_per_worker : int, optional
        Replace each worker after it has run this many items, so that an operation that
        leaks memory or file descriptors cannot poison the rest of the run.  Default: no
        limit.  (A worker whose item fails with ``MemoryError`` or "too many open files"
        is replaced whatever this says.)
    fail_fast : bool, default True
        Stop the call when its first items all fail with one same reason and none has
        succeeded (a setup problem, such as a wrong argument).  ``False`` goes through
        every item whatever happens, for campaigns whose first items may really fail.
    cache : bool, str or Path, optional
        The journal that makes reruns exact and resumable.  Default: for file outputs, a
        journal beside the first output file; none for outputs in memory.  ``False``: no
        journal for this call (existing output files are reused as they are, as wfl does).
        A path: keep the journal there (this is how outputs in memory get one).
    cache_extra : object, optional
        More things the outputs depend on that the journal cannot see by itself, folded
        into every item's cache key: values (a version string, a dict of settings) and
        :class:`pathlib.Path` objects, which count by the bytes of the file (or of every
        file under the directory) they name, e.g. a model file rewritten in place.  A
        list or dict of such things works too.
    executor : concurrent.futures.Executor, optional
        Run the chunks on this executor instead of wfl_like's own workers, e.g. a Dask
        ``Client(...).get_executor()``, a loky or ``ProcessPoolExecutor``: same order,
        random streams, error handling and journal.  The operation is sent by value
        with each chunk and set up (with the initializer) once per process there.
        ``num_python_subprocesses`` is then ignored, and ``timeout`` cannot be enforced
        (the executor's workers are not ours to kill).
    workers_read_files : bool, optional
        For inputs in extended-XYZ files: the workers read and parse their frames and
        write their outputs as text themselves, and the driver only moves bytes (byte
        ranges out, text back).  ``False``: the driver parses the inputs and sends the
        structures, as for inputs in memory; needed where the workers cannot open the
        input files by the driver's paths (an executor whose workers run on machines
        without the driver's filesystem).  Default: the env var
        ``WFL_LIKE_WORKERS_READ_FILES`` (``0`` or ``1``), else ``True``.  Outputs are the
        same either way.
    remote_info : dict or RemoteInfo, optional
        Send the inputs as queued jobs (Slurm job arrays) of ``num_inputs_per_queued_job``
        items each, run by the usual engine inside each job, and collect their results:
        ``{"sys_name": "slurm", "job_name": ..., "resources": {"max_time": "2h", ...}, ...}``
        (see :class:`~wfl_like.autoparallelize.remote.remote_info.RemoteInfo`).  Default:
        the entry for this operation in the env var ``WFL_EXPYRE_INFO``, else run here.
        Needs a journal (file outputs, or ``cache=PATH``): it also records the jobs, so
        that a rerun after the driver died collects them instead of submitting again.
    progress : bool, optional
        Draw a progress bar (items done of the total, rate, time left, failures; jobs by
        state for queued jobs).  Default: the env var ``WFL_LIKE_PROGRESS`` (``0`` or
        ``1``), else drawn where a person watches (standard error is a terminal, or a
        notebook).  Never drawn inside worker processes.
    wait : bool, default True
        ``False``: return at once a :class:`concurrent.futures.Future` of what the call
        returns (its ConfigSet, or None), computed in a thread of its own, so that
        independent calls (two datasets, two potentials) run at the same time, each with
        its own workers or on one shared ``executor``.  Journal, output lock, failures and
        random streams are those of a blocking call (the call's generator is spawned at
        once, in call order).  The inputs must not change until the future is done.

    Raises
    ------
    ValueError
        An unknown option name.
    """

    def __init__(self, **options):
        _check_names(options, "AutoparaInfo")
        self._given = options

    def __getattr__(self, name):
        if name.startswith("_") or name not in _DEFAULTS:
            raise AttributeError(name)
        return self._given.get(name, _DEFAULTS[name])

    def __setattr__(self, name, value):
        if name == "_given":
            object.__setattr__(self, name, value)
        else:
            option = {name: value}
            _check_names(option, "AutoparaInfo")
            self._given.update(option)

    def with_defaults(self, defaults=None):
        """A complete AutoparaInfo: given options, then ``defaults``, then class defaults.

        Parameters
        ----------
        defaults : dict, optional
            The wrapper's ``default_autopara_info``.
        """
        defaults = dict(defaults or {})
        _check_names(defaults, "default_autopara_info")
        resolved = AutoparaInfo(**{**_DEFAULTS, **defaults, **self._given})
        resolved._validate()
        return resolved

    def update_defaults(self, default_kwargs):
        """wfl's in-place form of :meth:`with_defaults`."""
        self._given = dict(self.with_defaults(default_kwargs)._given)

    def _validate(self):
        n = self.num_python_subprocesses
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"num_python_subprocesses must be an integer >= 0 or None, not {n!r}")
        chunk = self.num_inputs_per_python_subprocess
        if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"num_inputs_per_python_subprocess must be an integer >= 1 or 'auto', not {chunk!r}")
        if not isinstance(self.iterable_arg, (int, str)) or isinstance(self.iterable_arg, bool):
            raise TypeError(f"iterable_arg must be an int (position) or a str (keyword), "
                            f"not {self.iterable_arg!r}")
        if self.errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {self.errors!r}")
        retries = self.retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
        timeout = self.timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
        initializer_timeout = self.initializer_timeout
        if initializer_timeout is not None and (isinstance(initializer_timeout, bool)
                                                or not isinstance(initializer_timeout, (int, float))
                                                or not initializer_timeout > 0):
            raise ValueError(f"initializer_timeout must be a number of seconds > 0 or None, "
                             f"not {initializer_timeout!r}")
        most = self.max_items_per_worker
        if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
            raise ValueError(f"max_items_per_worker must be an integer >= 1 or None, not {most!r}")
        if not isinstance(self.fail_fast, bool):
            raise TypeError(f"fail_fast must be True or False, not {self.fail_fast!r}")
        if self.cache is not None and not isinstance(self.cache, (bool, str, os.PathLike)):
            raise TypeError(f"cache must be True, False, None or a path, not {self.cache!r}")
        if self.executor is not None and not callable(getattr(self.executor, "submit", None)):
            raise TypeError(f"executor must be a concurrent.futures.Executor (with a submit method), "
                            f"not {type(self.executor).__name__}")
        if self.workers_read_files is not None and not isinstance(self.workers_read_files, bool):
            raise TypeError(f"workers_read_files must be True, False or None, not {self.workers_read_files!r}")
        if not isinstance(self.wait, bool):
            raise TypeError(f"wait must be True or False, not {self.wait!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True, False or None, not {self.progress!r}")
        if self.remote_info is not None:
            from wfl_like.autoparallelize.remote.remote_info import RemoteInfo

            RemoteInfo.from_autopara(self.remote_info, "")     # checked here: the message names the option
        init = self.initializer
        if (not isinstance(init, (tuple, list)) or len(init) != 2
                or not (init[0] is None or callable(init[0]))):
            raise ValueError(f"initializer must be a pair (callable or None, args), not {init!r}")

    def as_dict(self):
        """All options with their values (given or default)."""
        return {name: getattr(self, name) for name in _DEFAULTS}

    def __repr__(self):
        return "AutoparaInfo(" + ", ".join(f"{k}={v!r}" for k, v in self._given.items()) + ")"


def workers_read_files(option):
    """Whether the workers read the input files themselves: ``option``, else
    ``$WFL_LIKE_WORKERS_READ_FILES``, else True.

    Raises
    ------
    ValueError
        The env var is set to something other than a yes or a no; the message names it.
    """
    if option is not None:
        return option
    text = os.environ.get(WORKERS_READ_FILES_ENV, "").strip().lower()
    if not text:
        return True
    if text in _YES or text in _NO:
        return text in _YES
    raise ValueError(f"environment variable {WORKERS_READ_FILES_ENV}={text!r} is not 0 or 1; set it to 0 for the "
                     f"driver to read the input files, 1 (or unset it) for the workers to read them")


def _check_names(options, where):
    """Refuse unknown option names; drop empty wfl remote-only options from ``options``."""
    for name in list(options):
        if name in _REMOTE_ONLY:
            if options[name]:
                raise ValueError(f"{where} option {name!r} of wfl's remote job submission (ExPyRe) is not "
                                 f"supported by wfl_like; leave it unset (queued jobs are set up by "
                                 f"remote_info alone)")
            del options[name]
        elif name not in _DEFAULTS:
            raise ValueError(f"unknown {where} option {name!r}; known options: {sorted(_DEFAULTS)}")
