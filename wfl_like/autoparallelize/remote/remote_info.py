"""What a user says about sending groups of inputs to a queuing system: :class:`RemoteInfo`.

The names are wfl's (``remote_info`` of ``autopara_info``, and the env var
``WFL_EXPYRE_INFO``), so that a wfl user's settings carry over; only Slurm is known.
"""

import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path

EXPYRE_INFO_ENV = "WFL_EXPYRE_INFO"
# set by job_main inside a queued job: an operation called there runs there, whatever
# WFL_EXPYRE_INFO (which the job inherits from the driver) says
IN_QUEUED_JOB_ENV = "WFL_LIKE_IN_QUEUED_JOB"
SYSTEMS = ("slurm",)
RESOURCE_KEYS = ("max_time", "num_nodes", "num_cores", "partitions")
# wfl/ExPyRe options that this layer does not implement: named apart from typos in messages
_WFL_ONLY = ("post_cmds", "input_files", "output_files", "exact_fit", "partial_node",
             "ignore_failed_jobs", "resubmit_killed_jobs", "hash_ignore")

_JOB_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# "2h", "30m", "90s", "1.5d": a number and a unit
_TIME_WITH_UNIT = re.compile(r"(\d+(?:\.\d*)?)\s*([smhd])")
# Slurm's own "[D-]HH:MM:SS", "MM:SS"
_TIME_CLOCK = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class RemoteInfo:
    """How the inputs of one operation are sent as queued jobs (job arrays on Slurm).

    Parameters
    ----------
    sys_name : str
        The queuing system: ``"slurm"``.
    job_name : str
        Name of the jobs (letters, digits, ``_.+-``); make it unique among the jobs
        that share a cluster and a user.
    resources : dict
        ``max_time`` (required: ``"2h"``, ``"30m"``, ``"1:00:00"``, ``"1-00:00:00"`` or
        seconds as an int), ``num_nodes`` (int, default 1: whole nodes unless
        ``num_cores`` is given), ``num_cores`` (int: cores of the one task of a job),
        ``partitions`` (str or list of str).
    num_inputs_per_queued_job : int, default -100
        Items per job; a negative ``-N`` gives each job ``N`` times
        ``num_inputs_per_python_subprocess`` items (as in wfl; ``N`` items when that is
        ``"auto"``).
    header_extra : list of str
        More sbatch options: ``"#SBATCH --qos=debug"`` or just ``"--qos=debug"``.
    pre_cmds : list of str
        Shell lines run in the job before the items (``module load ...``).
    env_vars : dict or list of str
        Set in the job: a dict's values are quoted; ``"K=V"`` strings are exported as
        written, so ``"PATH=/opt/bin:$PATH"`` is expanded by the job's shell, as in wfl.
    retries : int, default 2
        How many more times the items of a job killed before it finished are queued.
    check_interval : float, default 5
        Seconds between looks at the queue.
    wait_for_results : bool, default True
        ``False``: submit the jobs (or find them queued) and return ``None`` at once, the
        outputs unwritten; a later call with the same arguments collects.
    timeout : float, optional
        Seconds the driver waits for the jobs; past that it raises
        :class:`~wfl_like.errors.QueuedJobsTimeout` and leaves them queued, to be collected
        by a rerun.  Default: no limit.
    """

    sys_name: str
    job_name: str
    resources: dict
    num_inputs_per_queued_job: int = -100
    header_extra: list = field(default_factory=list)
    pre_cmds: list = field(default_factory=list)
    env_vars: object = field(default_factory=dict)
    retries: int = 2
    check_interval: float = 5
    wait_for_results: bool = True
    timeout: float = None

    def __post_init__(self):
        self._check_names()
        self.resources = _checked_resources(self.resources)
        self.num_inputs_per_queued_job = _checked_int("num_inputs_per_queued_job", self.num_inputs_per_queued_job,
                                                      "a number of items per job (> 0), or -N for N jobs",
                                                      allow=lambda v: v != 0)
        self.header_extra = [_directive(line) for line in _str_list("header_extra", self.header_extra)]
        self.pre_cmds = _str_list("pre_cmds", self.pre_cmds)
        self.env_vars = _checked_env_vars(self.env_vars)
        self.retries = _checked_int("retries", self.retries, "a number of resubmissions >= 0",
                                    allow=lambda v: v >= 0)
        self.check_interval = _checked_interval("check_interval", self.check_interval)
        if not math.isfinite(self.check_interval):
            raise ValueError(f"remote_info check_interval={self.check_interval} must be a finite number of seconds")
        if not isinstance(self.wait_for_results, bool):
            raise TypeError(f"remote_info wait_for_results must be True or False, not {self.wait_for_results!r}")
        if self.timeout is not None:
            self.timeout = _checked_interval("timeout", self.timeout)

    def _check_names(self):
        if not isinstance(self.sys_name, str):
            raise TypeError(f"remote_info sys_name must be a str ('slurm'), not {type(self.sys_name).__name__}")
        if self.sys_name not in SYSTEMS:
            raise ValueError(f"remote_info sys_name {self.sys_name!r} is not a queuing system wfl_like knows; "
                             f"use one of {list(SYSTEMS)}")
        if not isinstance(self.job_name, str):
            raise TypeError(f"remote_info job_name must be a str, not {type(self.job_name).__name__}")
        if not _JOB_NAME.fullmatch(self.job_name):
            raise ValueError(f"remote_info job_name {self.job_name!r} must be made of letters, digits and _.+- "
                             f"(no spaces), e.g. 'dft_sp'")

    @classmethod
    def from_autopara(cls, value, op_name):
        """The RemoteInfo of an operation, or None when it runs where it is called.

        Parameters
        ----------
        value : RemoteInfo, dict or None
            ``autopara_info["remote_info"]``.  ``None``: looked up in the env var
            ``WFL_EXPYRE_INFO`` (JSON, or the path of a JSON file), a dict keyed by
            operation name; a key matches the full name (``module.function``) or its
            trailing dotted parts (``"calculate"``), the longest key that matches wins.
        op_name : str
            ``module.qualname`` of the operation.

        Raises
        ------
        TypeError, ValueError
            A bad value; the message names the key and what is expected.
        """
        if isinstance(value, cls):
            return value
        if value is None:
            if os.environ.get(IN_QUEUED_JOB_ENV):
                return None
            value = _from_env(op_name)
            if value is None:
                return None
        if not isinstance(value, dict):
            raise TypeError(f"remote_info must be a RemoteInfo or a dict, not {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        for key in value:
            if key in _WFL_ONLY:
                raise ValueError(f"remote_info option {key!r} of wfl (ExPyRe) is not supported by wfl_like's "
                                 f"queued jobs; remove it")
            if key not in known:
                raise ValueError(f"unknown remote_info option {key!r}; the options are {sorted(known)}")
        missing = [name for name in ("sys_name", "job_name", "resources") if name not in value]
        if missing:
            raise ValueError(f"remote_info lacks {missing}: give sys_name ('slurm'), job_name and resources "
                             f"(at least max_time)")
        return cls(**value)

    def items_per_job(self, chunk_size):
        """How many items each queued job gets, with ``num_inputs_per_python_subprocess=chunk_size``."""
        if self.num_inputs_per_queued_job > 0:
            return self.num_inputs_per_queued_job
        return -self.num_inputs_per_queued_job * (chunk_size if isinstance(chunk_size, int) else 1)

    def sbatch_directives(self, n_tasks=None, log_dir=None):
        """The ``#SBATCH`` lines of the job script.

        Parameters
        ----------
        n_tasks : int, optional
            Tasks of the job array (``--array=0-(n_tasks-1)``).
        log_dir : str or Path, optional
            Where each task's stdout and stderr go (``JOBNAME_ARRAYID_TASK.out`` / ``.err``).

        Returns
        -------
        list of str
        """
        options = [f"--job-name={self.job_name}", f"--time={slurm_time(self.resources['max_time'])}",
                   f"--nodes={self.resources['num_nodes']}", "--ntasks=1"]
        if self.resources.get("num_cores") is not None:
            options.append(f"--cpus-per-task={self.resources['num_cores']}")
        else:
            # whole nodes, as ExPyRe gives for num_nodes: the job's workers use every core
            options.append("--exclusive")
        if self.resources.get("partitions"):
            options.append(f"--partition={','.join(self.resources['partitions'])}")
        if n_tasks is not None:
            options.append(f"--array=0-{_checked_int('n_tasks', n_tasks, 'at least 1', allow=lambda v: v > 0) - 1}")
        if log_dir is not None:
            options += [f"--output={Path(log_dir) / '%x_%A_%a.out'}", f"--error={Path(log_dir) / '%x_%A_%a.err'}"]
        return [f"#SBATCH {option}" for option in options] + self.header_extra

    def setup_lines(self):
        """Shell lines run in the job before the items: ``pre_cmds``, then the ``env_vars``."""
        if isinstance(self.env_vars, dict):
            exports = [f"export {name}={shlex.quote(value)}" for name, value in self.env_vars.items()]
        else:
            exports = [f"export {assignment}" for assignment in self.env_vars]
        return list(self.pre_cmds) + exports


def _from_env(op_name):
    """The remote_info dict for ``op_name`` from ``WFL_EXPYRE_INFO``, or None."""
    text = os.environ.get(EXPYRE_INFO_ENV, "").strip()
    if not text:
        return None
    where = f"environment variable {EXPYRE_INFO_ENV}"
    if not text.startswith("{"):
        where = f"file {text!r} named by {EXPYRE_INFO_ENV}"
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"{where} cannot be read ({exc.strerror or exc}); set {EXPYRE_INFO_ENV} to JSON or "
                             f"to the path of a JSON file") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); it must map operation names to remote_info "
                         f"dicts") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{where} must be a JSON object mapping operation names to remote_info objects")
    from wfl_like.progress import public_name

    # the wrapper's name too: a wfl user's key "calculate" names the op calculate() runs (_calculate_op)
    public = public_name(op_name)
    matching = [key for key in table if op_name == key or op_name.endswith("." + key) or key == public]
    return table[max(matching, key=len)] if matching else None


def _checked_resources(resources):
    if not isinstance(resources, dict):
        raise TypeError(f"remote_info resources must be a dict (max_time, num_nodes, num_cores, partitions), "
                        f"not {type(resources).__name__}")
    unknown = [key for key in resources if key not in RESOURCE_KEYS]
    if unknown:
        raise ValueError(f"unknown remote_info resources {unknown}; the keys are {list(RESOURCE_KEYS)} (other "
                         f"sbatch options go in header_extra)")
    if "max_time" not in resources:
        raise ValueError("remote_info resources lack max_time: give the wall time of a job, e.g. '2h' or '1:00:00'")
    checked = {"max_time": time_seconds(resources["max_time"]), "partitions": _partitions(resources.get("partitions"))}
    checked["num_nodes"] = _checked_int("resources num_nodes", resources.get("num_nodes", 1), "a number of nodes >= 1",
                                        allow=lambda v: v >= 1)
    cores = resources.get("num_cores")
    checked["num_cores"] = None if cores is None else _checked_int("resources num_cores", cores,
                                                                   "a number of cores >= 1", allow=lambda v: v >= 1)
    return checked


def time_seconds(value):
    """Seconds of a wall time: an int of seconds, ``"2h"``, ``"30m"``, ``"1:00:00"``, ``"1-12:00:00"``.

    Raises
    ------
    TypeError, ValueError
        Not one of those forms; the message names ``resources max_time``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"remote_info resources max_time must be seconds (int) or a str like '2h' or '1:00:00', "
                        f"not {type(value).__name__}")
    if isinstance(value, int):
        seconds = value
    elif match := _TIME_WITH_UNIT.fullmatch(value.strip()):
        seconds = math.ceil(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    elif match := _TIME_CLOCK.fullmatch(value.strip()):
        days, hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError(f"remote_info resources max_time {value!r} is not a wall time; write e.g. '2h', '30m', "
                         f"'90s', '1:00:00' or '1-00:00:00'")
    if seconds <= 0:
        raise ValueError(f"remote_info resources max_time {value!r} must be more than 0 s")
    return seconds


def slurm_time(seconds):
    """``D-HH:MM:SS`` for sbatch ``--time``, rounded up to whole minutes (Slurm's resolution)."""
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def _partitions(value):
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and _JOB_NAME.fullmatch(n) for n in names):
        raise ValueError(f"remote_info resources partitions must be a partition name or a list of them, "
                         f"not {value!r}")
    return list(names)


def _checked_int(name, value, expected, allow):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"remote_info {name} must be an int ({expected}), not {type(value).__name__}")
    if not allow(value):
        raise ValueError(f"remote_info {name}={value} is not allowed: give {expected}")
    return value


def _checked_interval(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"remote_info {name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"remote_info {name}={value} must be more than 0 seconds")
    return value


def _str_list(name, value):
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"remote_info {name} must be a list of str (one line each), not {type(value).__name__}")
    for line in value:
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise ValueError(f"remote_info {name} entry {line!r} must be a str of one line")
    return list(value)


def _directive(line):
    """``#SBATCH ...`` of a header_extra entry, given with or without ``#SBATCH``."""
    text = line.strip()
    if text.startswith("#SBATCH"):
        return text
    if text.startswith("-"):
        return f"#SBATCH {text}"
    raise ValueError(f"remote_info header_extra entry {line!r} is neither an '#SBATCH ...' line nor an sbatch "
                     f"option ('--qos=debug')")


def _checked_env_vars(value):
    if isinstance(value, dict):
        checked = {}
        for name, setting in value.items():
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise ValueError(f"remote_info env_vars name {name!r} is not a valid variable name")
            if isinstance(setting, bool) or not isinstance(setting, (str, int, float)):
                raise TypeError(f"remote_info env_vars[{name!r}] must be a str or a number, "
                                f"not {type(setting).__name__}")
            checked[name] = str(setting)
        return checked
    assignments = _str_list("env_vars", value) if not isinstance(value, str) else None
    if assignments is None:
        raise TypeError("remote_info env_vars must be a dict or a list of 'NAME=VALUE' str, not str")
    for assignment in assignments:
        name, equals, _ = assignment.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"remote_info env_vars entry {assignment!r} must read 'NAME=VALUE'")
    return assignments
