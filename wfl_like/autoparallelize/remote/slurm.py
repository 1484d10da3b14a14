"""A thin layer over Slurm's commands: submit a job array, read its tasks' states, cancel it.

Job states come from ``squeue`` (queued and running tasks) and ``scontrol show job``
(tasks finished less than ``MinJobAge`` ago), never from ``sacct``, which needs the
accounting daemon that many clusters, and test clusters, do not run.  A task the
controller has forgotten has no state here: the results files of the tasks, on the
shared filesystem, are the final word on what finished.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from wfl_like.errors import SlurmError

COMMAND_TIMEOUT = 120
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
_UNKNOWN_JOB = "Invalid job id specified"
_FIELD = re.compile(r"(\w+)=(\S*)")
_LOG_OPTION = re.compile(r"#SBATCH\s+(?:--output|--error|-o|-e)[=\s]\s*(\S+)")


def _command(name):
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"{name} not found on PATH: run on a machine with Slurm's client commands (a login "
                         f"node), or add their directory to PATH")
    return path


def run_command(args, allow_unknown_job=False, keep_fd=None):
    """Run a Slurm command; its stdout, or None where ``allow_unknown_job`` and Slurm does not know the job.

    Raises
    ------
    SlurmError
        The command is missing, timed out or failed; the message gives it and its stderr.
    """
    argv = [_command(args[0]), *args[1:]]
    shown = " ".join(args)
    try:
        answer = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                                pass_fds=() if keep_fd is None else (keep_fd,))
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shown}` did not answer within {COMMAND_TIMEOUT} s; is slurmctld up?") from None
    except OSError as exc:
        raise SlurmError(f"`{shown}` could not be run: {exc}") from None
    if answer.returncode != 0:
        if allow_unknown_job and _UNKNOWN_JOB in answer.stderr:
            return None
        raise SlurmError(f"`{shown}` failed (exit status {answer.returncode}): "
                         f"{answer.stderr.strip() or 'nothing on stderr'}")
    return answer.stdout


def submit_array(script, n_tasks, directives, workdir, hold=False, comment=None, chdir=None, log_dir=None,
                 keep_fd=None):
    """Submit ``script`` as a job array of ``n_tasks`` tasks (``--array=0-(n_tasks-1)``).

    Parameters
    ----------
    script : str
        The shell lines of the job (after the ``#SBATCH`` lines); ``$SLURM_ARRAY_TASK_ID``
        tells a task which it is.
    n_tasks : int
    directives : list of str
        ``#SBATCH`` lines (:meth:`RemoteInfo.sbatch_directives`).  The array is given on the
        command line too, which wins over an ``--array`` among them.
    workdir : str or Path
        Where the job script is kept, and the jobs' working directory unless ``chdir``.
    hold : bool, default False
        Submit held (``--hold``): the tasks stay pending until released or cancelled.
    comment : str, optional
        The job's comment (``--comment``): :func:`find_by_comment` finds the job by it.
    chdir : str or Path, optional
        The jobs' working directory.
    log_dir : str or Path, optional
        Where each task's stdout and stderr go (``JOBNAME_ARRAYID_TASK.out`` / ``.err``), given
        on the command line: a path with spaces or quotes cannot go in an ``#SBATCH`` line.
    keep_fd : int, optional
        A descriptor sbatch inherits (and so holds open for as long as it runs).

    Returns
    -------
    str
        The job id of the array.

    Raises
    ------
    SlurmError
        sbatch is missing or refused the job (the message gives its stderr).
    """
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be an int >= 1, not {n_tasks!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _make_log_dirs(directives, workdir)
    text = "\n".join(["#!/bin/bash", *directives, "", script.rstrip("\n"), ""])
    fd, path = tempfile.mkstemp(prefix="array_", suffix=".sh", dir=workdir)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    args = ["sbatch", "--parsable", f"--array=0-{n_tasks - 1}", f"--chdir={chdir or workdir}"]
    if hold:
        args.append("--hold")
    if comment is not None:
        args.append(f"--comment={comment}")
    if log_dir is not None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        pattern = str(log_dir).replace("%", "%%")      # a literal % of the path, not a Slurm pattern
        args += [f"--output={pattern}/%x_%A_%a.out", f"--error={pattern}/%x_%A_%a.err"]
    out = run_command([*args, path], keep_fd=keep_fd)
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"`sbatch --parsable {path}` gave {out.strip()!r}, not a job id")
    return job_id


def find_by_comment(comment):
    """The job id of a job of this user whose comment is ``comment``, or None.

    Looks at every job the controller still knows (queued, running, and finished less
    than ``MinJobAge`` ago).
    """
    out = run_command(["squeue", "--me", "-h", "-t", "all", "-o", "%F|%k"])
    for line in out.splitlines():
        job_id, _, text = line.strip().partition("|")
        if text == comment and job_id.isdigit():
            return job_id
    return None


def _make_log_dirs(directives, workdir):
    """Make the directories of ``--output`` / ``--error`` paths: Slurm fails a task whose log
    directory is missing, without a word of why."""
    for line in directives:
        match = _LOG_OPTION.match(line.strip())
        if match:
            (workdir / match.group(1)).parent.mkdir(parents=True, exist_ok=True)


def task_states(job_id):
    """``{task index: state}`` of the tasks of job array ``job_id`` that Slurm still knows.

    States are Slurm's words (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED``,
    ``TIMEOUT``, ``NODE_FAIL``, ...).  Tasks finished more than ``MinJobAge`` ago are
    missing, as is every task of a job that Slurm has forgotten (then ``{}``), and a
    pending task cancelled alone (``cancel(job_id, tasks=[k])``: Slurm takes it out of
    its array's record).

    Raises
    ------
    SlurmError
        squeue or scontrol failed for another reason than an unknown job.
    """
    states = _scontrol_states(job_id)
    # squeue lists pending tasks one by one where scontrol may still show them as one range
    queued = run_command(["squeue", "-h", "-r", "-j", str(job_id), "-o", "%K %T"], allow_unknown_job=True)
    for line in (queued or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            states[int(parts[0])] = parts[1]
    return states


def _scontrol_states(job_id):
    out = run_command(["scontrol", "show", "job", "-o", str(job_id)], allow_unknown_job=True)
    states = {}
    for line in (out or "").splitlines():
        fields = dict(_FIELD.findall(line))
        if fields.get("ArrayJobId") != str(job_id) or "JobState" not in fields:
            continue
        for index in task_indices(fields.get("ArrayTaskId", "")):
            states[index] = fields["JobState"]
    return states


def task_indices(expression):
    """The indices of a Slurm array expression: ``"3"``, ``"0-7"``, ``"1,3,5-9"``, ``"0-15:2%4"``."""
    indices = []
    for part in expression.split("%")[0].split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if match is None:
            continue
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        indices.extend(range(first, last + 1, int(match.group(3) or 1)))
    return indices


def cancel(job_id, tasks=None):
    """Cancel job array ``job_id``, or only its tasks ``tasks`` (indices).

    Raises
    ------
    SlurmError
        scancel failed (a job Slurm has forgotten is not an error: it is not running).
    """
    targets = [str(job_id)] if tasks is None else [f"{job_id}_{int(task)}" for task in tasks]
    if targets:
        run_command(["scancel", *targets], allow_unknown_job=True)
