"""The ``wfl-like`` command line."""

import argparse
import ast
import inspect
import logging
import math
import os
import re
import signal
import sys
import warnings
from pathlib import Path

from wfl_like.autoparallelize import mpipool_support
from wfl_like.autoparallelize.mpipool_support import MPIPOOL_ENV
from wfl_like.configset import OutputSpec
from wfl_like.errors import InputFileError, JournalError, OutputIsInputError, OutputLockedError
from wfl_like.stopping import Terminated, stop_on_signals

PROG = "wfl-like"
DEFAULT_CALCULATOR = "ase.calculators.emt:EMT"
# md's random streams come from this seed unless --seed is given: the same command
# gives the same trajectories, and resumes its own run
DEFAULT_SEED = 0

# --slurm's defaults, for jobs that each compute a good number of cheap structures
SLURM_MAX_TIME = "1h"
SLURM_PER_JOB = 100
# the options that shape --slurm's jobs (dest, option)
_SLURM_OPTIONS = (("job_name", "--job-name"), ("max_time", "--max-time"), ("per_job", "--per-job"),
                  ("partition", "--partition"), ("job_cores", "--job-cores"))

# Exit codes: 2 for bad input (as argparse does), 1 for a failure during the run,
# 128 + signal number when stopped by a signal.
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _whole_number(minimum, meaning=""):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}{meaning}")
        return value
    return parse


def _number(minimum=None, above=False):
    """An argparse type: a finite number, >= ``minimum`` (or > it, with ``above``)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number {'>' if above else '>='} {minimum:g}")
        return value
    return parse


_process_count = _whole_number(0, " (0: no worker processes)")
_positive_int = _whole_number(1)
_count = _whole_number(0)
_positive_float = _number(0, above=True)
_float = _number()
_non_negative_float = _number(0)


# Slurm job names and partition names: what RemoteInfo accepts
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")


def _job_name(text):
    if not _SLURM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} must be made of letters, digits and _.+- (no spaces)")
    return text


def _partitions(text):
    names = [name.strip() for name in text.split(",")]
    if not all(_SLURM_NAME.fullmatch(name) for name in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition name, or a comma-separated list of them")
    return names[0] if len(names) == 1 else names


def _wall_time(text):
    from wfl_like.autoparallelize.remote.remote_info import time_seconds

    try:
        time_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a wall time; write e.g. 30m, 2h, 90s, 1:00:00 or "
                                         f"1-00:00:00") from None
    # kept as written: RemoteInfo reads the text itself, as it does in a --remote-info file
    return text


def _chunk_size(text):
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1 or 'auto'") from None


def build_parser():
    """The argument parser of ``wfl-like`` and its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Apply per-structure operations to many atomic structures in parallel, "
                    "writing extended XYZ.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_calculate(commands)
    _add_relax(commands)
    _add_md(commands)

    status = commands.add_parser(
        "status", help="show how far the run that writes OUTPUT got",
        description="Show, from the journal kept beside OUTPUT, the operation and arguments of the run "
                    "that writes it, and how many input items are done, failed and pending, with the "
                    "reason of each failure. Works while the run is going on, and after it was killed.")
    status.add_argument("output", metavar="OUTPUT", help="the output file of a wfl_like run")
    status.add_argument("--failures", type=int, default=20, metavar="N",
                        help="list at most N failed items (default 20)")
    status.add_argument("--failed", action="store_true",
                        help="write the input structures that failed or were not finished to the file of -o, "
                             "to rerun them with other settings")
    status.add_argument("-o", "--output-failed", default=None, metavar="FILE", dest="failed_output",
                        help="with --failed: the extended-XYZ file to write them to")
    status.set_defaults(run=run_status)
    return parser


def _add_calculate(commands):
    calc = commands.add_parser(
        "calculate", help="evaluate an ASE calculator on every structure of the input",
        description="Evaluate an ASE calculator on every structure of INPUT (any file ASE reads) and "
                    "write them with the results (energy in info, forces in arrays, stress in info, "
                    "keys prefixed by the calculator's name, e.g. EMT_energy) to OUTPUT. "
                    "A structure on which the calculator fails is written with "
                    "<prefix>calculation_failed=True. Structures whose info has WFL_CALCULATOR_KWARGS "
                    "(or _ARGS, _INITIALIZER) get a calculator with those settings. If OUTPUT exists and "
                    "--overwrite is not given, nothing is recomputed.",
        epilog="Example: wfl-like calculate in.xyz -o out.xyz -n 4 "
               "--calculator ase.calculators.lj:LennardJones -k sigma=2.3 -k epsilon=0.4")
    _add_run_options(calc, default_chunk="10, or the calculator's wfl_generic_default_autopara_info",
                     default_errors="raise")
    calc.add_argument("-p", "--properties", default="energy,forces,stress", metavar="LIST",
                      help="comma-separated properties to compute (default energy,forces,stress)")
    calc.add_argument("--prefix", default="_auto_",
                      help="prefix of the stored keys (default: calculator name + '_')")
    calc.set_defaults(run=run_calculate)


def _add_relax(commands):
    relax = commands.add_parser(
        "relax", help="relax every structure of the input (wfl_like.generate.optimize)",
        description="Relax every structure of INPUT with ASE's PreconLBFGS and write each trajectory "
                    "(every --traj-step-interval steps, and always the last) to OUTPUT, with the "
                    "calculator's results under --results-prefix and optimize_config_type "
                    "(optimize_initial, optimize_mid, optimize_last_converged or "
                    "optimize_last_unconverged). With --pressure the cell relaxes too.",
        epilog="Example: wfl-like relax in.xyz -o relaxed.xyz -n 4 --fmax 0.01 --last-converged-only")
    _add_run_options(relax, default_chunk="the operation's own", default_errors="skip, as wfl's skip_failures")
    relax.add_argument("--fmax", type=_positive_float, default=1e-3, metavar="EV_PER_A",
                       help="converged when every force is below this, in eV/A (default 1e-3)")
    relax.add_argument("--steps", type=_positive_int, default=1000, metavar="N",
                       help="most optimizer steps per structure (default 1000)")
    relax.add_argument("--pressure", type=_float, default=None, metavar="GPA",
                       help="relax the cell too, at this pressure in GPa (default: fixed cell)")
    relax.add_argument("--no-keep-symmetry", dest="keep_symmetry", action="store_false",
                       help="let the relaxation break the structure's symmetry (default: kept, with ASE's "
                            "FixSymmetry)")
    relax.add_argument("--traj-step-interval", type=_positive_int, default=1, metavar="K",
                       help="keep every K-th step of each trajectory, and the last (default 1)")
    relax.add_argument("--last-converged-only", action="store_true",
                       help="write only the last configuration of each relaxation, and only if it converged")
    relax.add_argument("--results-prefix", default="last_op__optimize_", metavar="P",
                       help="prefix of the stored results (default last_op__optimize_)")
    relax.set_defaults(run=run_relax)


def _add_md(commands):
    md = commands.add_parser(
        "md", help="run molecular dynamics from every structure of the input (wfl_like.generate.md)",
        description="Run molecular dynamics from every structure of INPUT and write each trajectory "
                    "(every --traj-step-interval steps) to OUTPUT, with MD_time_fs, MD_step, "
                    "MD_temperature_K and the calculator's results under --results-prefix. Without "
                    "--temperature: NVE. Initial velocities and thermostat noise come from each "
                    "structure's own random stream, from --seed: the same command gives the same "
                    "trajectories whatever -n or --chunk-size.",
        epilog="Example: wfl-like md in.xyz -o md.xyz --steps 100 --dt 1 --temperature 300 -n 4")
    _add_run_options(md, default_chunk="the operation's own", default_errors="skip, as wfl's skip_failures")
    md.add_argument("--steps", type=_positive_int, required=True, metavar="N", help="MD steps per structure")
    md.add_argument("--dt", type=_positive_float, required=True, metavar="FS", help="time step in fs")
    md.add_argument("--temperature", type=_non_negative_float, default=None, metavar="K",
                    help="temperature in K of the initial velocities and of the thermostat (default: none, "
                         "NVE from the structures' own velocities)")
    md.add_argument("--integrator", choices=("Berendsen", "Langevin", "LangevinBAOAB"), default="Berendsen",
                    help="thermostat when --temperature and --temperature-tau are given (default Berendsen)")
    md.add_argument("--temperature-tau", type=_positive_float, default=None, metavar="FS",
                    help="thermostat time constant in fs; without it, --temperature only sets the initial "
                         "velocities and the dynamics is NVE, as in wfl")
    md.add_argument("--pressure", type=_float, default=None, metavar="GPA",
                    help="NPT at this pressure in GPa, by Berendsen volume rescaling (default: NVT/NVE)")
    md.add_argument("--traj-step-interval", type=_positive_int, default=1, metavar="K",
                    help="keep every K-th step of each trajectory (default 1)")
    md.add_argument("--seed", type=_count, default=DEFAULT_SEED, metavar="S",
                    help=f"seed of the random streams (default {DEFAULT_SEED}: reruns give the same "
                         f"trajectories; change it for independent ones)")
    md.add_argument("--results-prefix", default="last_op__md_", metavar="P",
                    help="prefix of the stored results (default last_op__md_)")
    md.set_defaults(run=run_md)


def _add_run_options(parser, default_chunk, default_errors):
    """The options every subcommand that runs an operation has: inputs and output, the
    calculator, and how the run is parallelized and handles failures."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="input file(s) or glob(s); several give one group per file in the output")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="output file; its extension picks the format (.xyz: extended XYZ)")
    calculator = parser.add_argument_group("calculator")
    calculator.add_argument("-c", "--calculator", default=DEFAULT_CALCULATOR, metavar="MODULE:NAME",
                            help=f"calculator class, or function returning a calculator (e.g. a mace_mp-style "
                                 f"factory), importable as MODULE:NAME (default {DEFAULT_CALCULATOR})")
    calculator.add_argument("-k", "--calc-kwarg", action="append", default=[], metavar="KEY=VALUE",
                            help="keyword argument of the calculator; VALUE is read as a Python literal "
                                 "(number, True, [1, 2], 'text') or else as a string; repeat for several; "
                                 "wins over --calc-kwargs-file")
    calculator.add_argument("--calc-kwargs-file", default=None, metavar="FILE",
                            help="keyword arguments of the calculator from a JSON file (.json) or a YAML file "
                                 "(.yaml, .yml; needs PyYAML) holding one mapping")
    run = parser.add_argument_group("running")
    run.add_argument("-n", "--num-processes", type=_process_count, default=None, metavar="N",
                     help="worker processes (default: $WFL_NUM_PYTHON_SUBPROCESSES, else serial); with "
                          "queued jobs, in each job")
    run.add_argument("--chunk-size", type=_chunk_size, default=None, metavar="M",
                     help=f"structures per call of the operation, or 'auto' to size chunks so each "
                          f"takes about 0.2 s (default: {default_chunk})")
    run.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                     help="seconds one structure may take; past that its worker is killed and the structure "
                          "fails as timed out (needs -n >= 1)")
    run.add_argument("--errors", choices=("raise", "skip"), default=None,
                     help=f"after a structure failed: 'raise' ends with an error and writes no output (the "
                          f"journal keeps what was computed); 'skip' leaves it out of the output with a warning "
                          f"(default: {default_errors})")
    run.add_argument("--retries", type=_count, default=None, metavar="R",
                     help="reruns of a structure whose worker died (signal, out of memory) before it "
                          "counts as failed (default 2)")
    run.add_argument("--overwrite", action="store_true", help="recompute and replace an existing OUTPUT")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--mpi", action="store_true",
                       help="run on the ranks of an MPI job (mpiexec -n N wfl-like ... --mpi): rank 0 "
                            "reads and writes, the others compute; also on when $WFL_MPIPOOL is set")
    where.add_argument("--remote-info", default=None, metavar="FILE",
                       help="send the structures as queued jobs (Slurm job arrays) set up by FILE, a JSON file "
                            "of one remote_info object (sys_name, job_name, resources, ...); run this on the "
                            "login node: the same command again collects the jobs and submits none twice "
                            "(default: the operation's entry in $WFL_EXPYRE_INFO, if any)")
    where.add_argument("--slurm", action="store_true",
                       help="queued jobs on Slurm, shaped by --job-name, --max-time, --per-job, --partition "
                            "and --job-cores; -n is then the worker processes in each job (default there: "
                            "$WFL_NUM_PYTHON_SUBPROCESSES, else the job's cores)")
    run.add_argument("--job-name", type=_job_name, default=None, metavar="NAME",
                     help="with --slurm: name of the jobs, letters, digits and _.+- (default: OUTPUT's file name)")
    run.add_argument("--max-time", type=_wall_time, default=None, metavar="TIME",
                     help=f"with --slurm: wall time of each job, e.g. 30m, 2h, 1:00:00 (default {SLURM_MAX_TIME})")
    run.add_argument("--per-job", type=_positive_int, default=None, metavar="N",
                     help=f"with --slurm: structures per job (default {SLURM_PER_JOB})")
    run.add_argument("--partition", type=_partitions, default=None, metavar="P",
                     help="with --slurm: partition(s) of the jobs, comma-separated (default: the cluster's)")
    run.add_argument("--job-cores", type=_positive_int, default=None, metavar="C",
                     help="with --slurm: cores of each job (default: a whole node each)")
    run.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")


def _version():
    from wfl_like import __version__

    return __version__


def parse_calculator(spec, kwarg_texts, kwargs_file=None):
    """``"module:Name"``, ``["key=value", ...]`` and a keyword file -> ``(constructor, (), kwargs)``.

    ``Name`` is a calculator class or any function returning a calculator.  Keyword
    arguments from ``kwargs_file`` (JSON, or YAML with PyYAML) come first; ``key=value``
    texts win over them.

    Raises
    ------
    UsageError
        The constructor cannot be imported or is not one, the file cannot be read, or a
        keyword argument is malformed or not taken by the constructor.
    """
    from wfl_like.calculators.spec import import_callable

    if spec.count(":") != 1 or spec.startswith(":") or spec.endswith(":"):
        raise UsageError(f"calculator {spec!r} must be given as MODULE:NAME, e.g. {DEFAULT_CALCULATOR}")
    try:
        constructor = import_callable(spec)
    except ImportError as exc:
        raise UsageError(f"cannot import calculator: {exc}") from None
    except (AttributeError, ValueError) as exc:
        raise UsageError(f"calculator {spec!r}: {exc}") from None
    if isinstance(constructor, type) and not hasattr(constructor, "get_property"):
        raise UsageError(f"{spec!r} is a class but not an ASE calculator class")
    kwargs = read_kwargs_file(kwargs_file) if kwargs_file is not None else {}
    kwargs.update(_kwargs_from_texts(kwarg_texts))
    try:
        inspect.signature(constructor).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"calculator {spec!r} does not take these arguments: {exc}") from None
    except ValueError:
        pass    # no signature to check against
    # ASE calculators take any keyword silently; a name they do not know is likely a typo
    known = getattr(constructor, "default_parameters", None) or {}
    unknown = sorted(set(kwargs) - set(known))
    if isinstance(constructor, type) and known and unknown:
        logging.getLogger(PROG).warning("%s does not list %s among its parameters %s; passing them anyway",
                                        spec.partition(":")[2], unknown, sorted(known))
    return constructor, (), kwargs


def _kwargs_from_texts(texts):
    kwargs = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"calculator keyword argument {text!r} must be KEY=VALUE")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def read_kwargs_file(path):
    """The mapping of keyword arguments held by a JSON or YAML file.

    JSON needs nothing beyond the standard library; ``.yaml``/``.yml`` files need PyYAML.

    Raises
    ------
    UsageError
        The file is missing or malformed, holds something other than a mapping with
        string keys, or is YAML and PyYAML is not installed.
    """
    import json

    suffix = Path(path).suffix.lower()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--calc-kwargs-file {path!r}: {exc.strerror or exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"--calc-kwargs-file {path!r} is YAML, which needs PyYAML (pip install PyYAML); "
                             f"or give the keyword arguments as a .json file") from None
        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"--calc-kwargs-file {path!r} is not valid YAML: {_one_line(exc)}") from None
    elif suffix == ".json":
        try:
            content = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--calc-kwargs-file {path!r} is not valid JSON: {exc}") from None
    else:
        raise UsageError(f"--calc-kwargs-file {path!r}: name it .json (JSON) or .yaml/.yml (YAML) to say "
                         f"which it is")
    if not isinstance(content, dict) or not all(isinstance(key, str) for key in content):
        raise UsageError(f"--calc-kwargs-file {path!r} must hold one mapping of keyword names to values, "
                         f"not {type(content).__name__}")
    return dict(content)


def _one_line(exc):
    return " ".join(str(exc).split())


def _calculator(args):
    return parse_calculator(args.calculator, args.calc_kwarg, args.calc_kwargs_file)


def _autopara_info(args):
    """The AutoparaInfo options the run options give (the others keep the operation's defaults)."""
    autopara_info = {} if args.errors is None else {"errors": args.errors}
    if args.num_processes is not None:
        autopara_info["num_python_subprocesses"] = args.num_processes
    if args.chunk_size is not None:
        autopara_info["num_inputs_per_python_subprocess"] = args.chunk_size
    if args.timeout is not None:
        autopara_info["timeout"] = args.timeout
    if args.retries is not None:
        autopara_info["retries"] = args.retries
    remote_info = remote_info_of(args)
    if remote_info is not None:
        autopara_info["remote_info"] = remote_info
    return autopara_info


def remote_info_of(args):
    """The ``remote_info`` dict that ``--remote-info`` or ``--slurm`` and its options give, or None.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options of a run subcommand.

    Returns
    -------
    dict or None
        None: neither option was given (``$WFL_EXPYRE_INFO`` may still send the run as
        queued jobs).

    Raises
    ------
    UsageError
        A job option without ``--slurm``, or a ``--remote-info`` file that cannot be read,
        is not JSON, or is not a valid remote_info (the message is RemoteInfo's own).
    """
    from wfl_like.autoparallelize.remote.remote_info import RemoteInfo

    given = [option for dest, option in _SLURM_OPTIONS if getattr(args, dest) is not None]
    if given and not args.slurm:
        hint = " (with --remote-info, its file holds these settings)" if args.remote_info is not None else ""
        raise UsageError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --slurm{hint}")
    if args.remote_info is not None:
        value, where = read_remote_info(args.remote_info), f"--remote-info {args.remote_info!r}"
    elif args.slurm:
        value, where = _slurm_remote_info(args), "--slurm"
    else:
        return None
    try:
        RemoteInfo.from_autopara(value, "")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    return value


def _slurm_remote_info(args):
    resources = {"max_time": args.max_time or SLURM_MAX_TIME}
    if args.partition is not None:
        resources["partitions"] = args.partition
    if args.job_cores is not None:
        resources["num_cores"] = args.job_cores
    # the output's file name tells the jobs apart in squeue; characters Slurm would refuse become _
    job_name = args.job_name or re.sub(r"[^A-Za-z0-9_.+\-]", "_", Path(args.output).name) or PROG
    return {"sys_name": "slurm", "job_name": job_name, "resources": resources,
            "num_inputs_per_queued_job": args.per_job or SLURM_PER_JOB}


def read_remote_info(path):
    """The remote_info dict held by the JSON file ``path`` (``--remote-info``).

    Parameters
    ----------
    path : str
        A JSON file holding one object: the keys of
        :class:`~wfl_like.autoparallelize.remote.remote_info.RemoteInfo`.

    Returns
    -------
    dict
        As read; RemoteInfo checks its keys and values.

    Raises
    ------
    UsageError
        The file cannot be read, is not JSON, or holds something other than one object.
    """
    import dataclasses
    import json

    from wfl_like.autoparallelize.remote.remote_info import EXPYRE_INFO_ENV, RemoteInfo

    what = ("give a JSON file holding one remote_info object, e.g. {\"sys_name\": \"slurm\", \"job_name\": "
            "\"dft_sp\", \"resources\": {\"max_time\": \"2h\"}}")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--remote-info {path!r} cannot be read ({exc.strerror or exc}); {what}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--remote-info {path!r} is not a text file; {what}") from None
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--remote-info {path!r} is not valid JSON ({exc}); {what}") from None
    if not isinstance(content, dict):
        raise UsageError(f"--remote-info {path!r} holds a JSON {type(content).__name__}, not an object; {what}")
    known = {field.name for field in dataclasses.fields(RemoteInfo)}
    if content and not known & set(content) and all(isinstance(v, dict) for v in content.values()):
        # the table form, keyed by operation name, belongs in the env var
        raise UsageError(f"--remote-info {path!r} maps names ({', '.join(sorted(content))}) to remote_info "
                         f"objects, the form of ${EXPYRE_INFO_ENV}: give it one remote_info object, or set "
                         f"{EXPYRE_INFO_ENV}={path} instead")
    return content


def _run_operation(args, operation, *op_args, **op_kwargs):
    """Run ``operation(inputs, outputs, *op_args, autopara_info=..., **op_kwargs)`` on the
    command's inputs and output; returns the exit code."""
    from wfl_like.configset import ConfigSet

    _check_gpu_setting(args)
    try:
        inputs = ConfigSet(args.inputs[0] if len(args.inputs) == 1 else args.inputs)
        outputs = OutputSpec(args.output, overwrite=args.overwrite)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    autopara_info = _autopara_info(args)
    try:
        result = operation(inputs, outputs, *op_args, autopara_info=autopara_info, **op_kwargs)
    except (KeyboardInterrupt, Terminated) as stop:
        # the stop may come after the output was published: the message must say so
        stop.published = [str(path) for path in outputs.published]
        raise
    if outputs.n_stored:
        logging.getLogger(PROG).info("wrote %d structures to %s", outputs.n_stored, args.output)
    elif result is None and "remote_info" in autopara_info:
        # wait_for_results=False: the command ends while its jobs run on
        logging.getLogger(PROG).info("%s is not written yet: its queued jobs run on; the same command "
                                     "again collects them", args.output)
    return 0


def _check_gpu_setting(args):
    """A ``WFL_TORCH_N_GPUS`` the workers cannot use is bad input (exit code 2), said before any
    input is read, not a failure of the run."""
    from wfl_like.autoparallelize.workers.devices import device_plan

    # the engine checks it for serial runs too
    try:
        device_plan()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_calculate(args):
    """``wfl-like calculate``: returns the exit code."""
    from wfl_like.calculators.generic import calculate, check_properties

    calculator = _calculator(args)
    properties = [p.strip() for p in args.properties.split(",") if p.strip()]
    if not properties:
        raise UsageError("--properties is empty")
    try:
        check_properties(calculator, properties)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--properties: {exc}") from None
    return _run_operation(args, calculate, calculator, properties=properties, output_prefix=args.prefix)


def run_relax(args):
    """``wfl-like relax``: returns the exit code."""
    import importlib.util

    from wfl_like.generate.optimize import check_arguments as check_relax_arguments
    from wfl_like.generate.optimize import optimize

    calculator = _calculator(args)
    if args.keep_symmetry and importlib.util.find_spec("spglib") is None:
        # ASE's FixSymmetry needs it; without this check every structure would fail the same way
        raise UsageError("keeping the symmetry (the default) needs spglib (pip install spglib); "
                         "or pass --no-keep-symmetry")
    options = dict(fmax=args.fmax, steps=args.steps, pressure=args.pressure, traj_step_interval=args.traj_step_interval,
                   traj_subselect="last_converged" if args.last_converged_only else None,
                   results_prefix=args.results_prefix)
    _check_options(check_relax_arguments, calculator, **options)
    return _run_operation(args, optimize, calculator, keep_symmetry=args.keep_symmetry, **options)


def run_md(args):
    """``wfl-like md``: returns the exit code."""
    import numpy as np

    from wfl_like.generate.md import check_arguments as check_md_arguments
    from wfl_like.generate.md import md

    calculator = _calculator(args)
    if args.temperature is None and args.integrator != "Berendsen":
        raise UsageError(f"--integrator {args.integrator} is a thermostat: give --temperature too")
    if args.temperature is None and args.temperature_tau is not None:
        raise UsageError("--temperature-tau needs --temperature")
    if args.pressure is not None and args.temperature_tau is None:
        raise UsageError("--pressure needs --temperature and --temperature-tau (the barostat's time constant "
                         "is 3 times the thermostat's)")
    options = dict(steps=args.steps, dt=args.dt, integrator=args.integrator, temperature=args.temperature,
                   temperature_tau=args.temperature_tau, pressure=args.pressure,
                   traj_step_interval=args.traj_step_interval, results_prefix=args.results_prefix,
                   rng=np.random.default_rng(args.seed))
    _check_options(check_md_arguments, calculator, **options)
    if args.temperature is not None and args.temperature_tau is None:
        # wfl's meaning, which a command line user may not expect
        logging.getLogger(PROG).warning("--temperature without --temperature-tau: velocities are drawn at %g K, "
                                        "then the dynamics is NVE (no thermostat); give --temperature-tau for "
                                        "a thermostat", args.temperature)
    # the seed is said so that a run can be repeated, or made independent of another
    logging.getLogger(PROG).info("md: random streams from seed %d", args.seed)
    return _run_operation(args, md, calculator, **options)


def _check_options(check, calculator, **options):
    """The operation's own checks of its arguments, before any input is read: what they
    refuse is bad input (exit code 2), not a failure of the run."""
    try:
        with warnings.catch_warnings():
            # the run itself warns of what it cannot use; once is enough
            warnings.simplefilter("ignore")
            check(calculator, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def run_status(args):
    """``wfl-like status``: print the journal's summary; returns the exit code."""
    import sqlite3

    from wfl_like.autoparallelize.resume.journal import journal_path
    from wfl_like.errors import JournalError

    path = journal_path(args.output)
    if not path.exists():
        raise UsageError(f"no journal for {args.output!r} (expected {str(path)!r}): it was not written by "
                         f"wfl_like, or with the cache off")
    if args.failed != (args.failed_output is not None):
        raise UsageError("--failed and -o FILE go together: `wfl-like status --failed OUTPUT -o failed.xyz` "
                         "writes the failed and unfinished input structures to failed.xyz")
    try:
        lines = _status_lines(args, path)
        if args.failed:
            lines.append(_export_unfinished(args, path))
    except (JournalError, PermissionError) as exc:
        raise UsageError(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise UsageError(f"cannot read the journal {str(path)!r}: {exc}") from None
    except (TypeError, ValueError, AttributeError):
        raise UsageError(f"journal {str(path)!r} holds a malformed record of its call; rerun the call with "
                         f"--overwrite (overwrite=True) to start it afresh") from None
    print("\n".join(lines))
    return 0


def _status_lines(args, path):
    """The lines ``wfl-like status`` prints, all read before any is printed."""
    from wfl_like.autoparallelize.resume.journal import Journal

    with Journal(path, read_only=True) as journal:
        call = journal.meta("call") or {}
        counts = journal.counts()
        n_items = journal.meta("n_items")
        complete = journal.meta("complete") is True
        failures = journal.failures(limit=args.failures)
    pending = (f", {n_items - counts['done'] - counts['failed']} pending" if complete and n_items is not None
               else " (the rest unknown: the run did not reach the end of its input)")
    arguments = ", ".join([str(a) for a in call.get("args", [])]
                          + [f"{k}={v}" for k, v in dict(call.get("kwargs", {})).items()])
    lines = [f"output:    {args.output} ({'complete' if complete else 'not complete'})",
             f"operation: {call.get('op', '?')}({arguments})",
             f"items:     {counts['done']} done, {counts['failed']} failed{pending}"]
    lines += [f"  item {index}: {reason}" for index, reason in failures]
    if counts["failed"] > len(failures):
        lines.append(f"  ... and {counts['failed'] - len(failures)} more")
    return lines + _manifest_lines(args.output)


def _manifest_lines(output):
    """What the manifest beside ``output`` adds: who made it, where, when, from what, with what."""
    from wfl_like.manifest import read_manifest

    manifest = read_manifest(output)
    if manifest is None:
        return []
    lines = [f"made by:   {manifest.get('operation', '?')} on {manifest.get('host', '?')} "
             f"(pid {manifest.get('pid', '?')}), started {manifest.get('started', '?')}, "
             f"{manifest.get('state', '?')}" + (f" {manifest['finished']}" if manifest.get("finished") else "")]
    inputs = manifest.get("inputs")
    if isinstance(inputs, list):
        lines += [f"input:     {entry.get('path')} (sha256 {str(entry.get('sha256'))[:16]}...)"
                  for entry in inputs if isinstance(entry, dict)]
    versions = manifest.get("versions")
    if isinstance(versions, dict):
        lines.append("versions:  " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    if manifest.get("stopped_by"):
        lines.append(f"stopped:   {manifest['stopped_by']}")
    return lines


def _export_unfinished(args, path):
    """Write the input structures of ``args.output``'s run that failed or were not finished to
    ``args.failed_output``; the line that says so."""
    import ase.io

    from wfl_like.autoparallelize.resume.journal import Journal
    from wfl_like.configset import ConfigSet
    from wfl_like.manifest import manifest_path, read_manifest

    manifest = read_manifest(args.output)
    inputs = manifest.get("inputs") if manifest is not None else None
    if not isinstance(inputs, list) or not inputs:
        raise UsageError(f"--failed needs the input files of the run, named in {str(manifest_path(args.output))!r}; "
                         f"there is no such manifest, or the run's inputs were in memory")
    with Journal(path, read_only=True) as journal:
        done = journal.done_indices()
    paths = [entry.get("path") for entry in inputs]
    missing = [p for p in paths if not isinstance(p, str) or not Path(p).is_file()]
    if missing:
        raise UsageError(f"input file {missing[0]!r} of the run is gone; --failed reads the structures from it")
    read_kwargs = manifest.get("inputs_read_kwargs") or {}
    source = ConfigSet(paths[0] if len(paths) == 1 else paths, read_kwargs=read_kwargs)
    left = [atoms for index, atoms in enumerate(source) if index not in done]
    ase.io.write(args.failed_output, left, format="extxyz")
    return f"wrote {len(left)} failed or unfinished input structures to {args.failed_output}"


def main(argv=None):
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        queued = getattr(args, "slurm", False) or getattr(args, "remote_info", None) is not None
        if queued and os.environ.get(MPIPOOL_ENV):
            # the ranks would wait for work that goes to the queue instead
            raise UsageError(f"{'--slurm' if args.slurm else '--remote-info'} sends the structures as queued "
                             f"jobs, not to MPI ranks: unset {MPIPOOL_ENV}")
        if getattr(args, "mpi", False) or os.environ.get(MPIPOOL_ENV):
            os.environ[MPIPOOL_ENV] = os.environ.get(MPIPOOL_ENV) or "1"
            mpipool_support.init()      # worker ranks serve rank 0 from here, and leave at its end
        # INFO from wfl_like only: other libraries' INFO lines (an optimizer's line search)
        # would drown the run's own
        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s", stream=sys.stderr)
        for name in ("wfl_like", PROG):
            logging.getLogger(name).setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
        # warnings (e.g. an output that could not be checked) as one line each, like the logs
        warnings.showwarning = _show_warning
        with stop_on_signals(prog=PROG):
            return args.run(args)
    except (UsageError, InputFileError, JournalError, OutputIsInputError, OutputLockedError, FileNotFoundError,
            FileExistsError, PermissionError, IsADirectoryError) as exc:
        return _fail(exc, EXIT_USAGE)
    except KeyboardInterrupt as stop:
        print(_stopped_message("interrupted", stop), file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as stop:
        print(_stopped_message("terminated", stop), file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as exc:
        return _fail(exc, 1)


def _stopped_message(what, stop):
    published = getattr(stop, "published", None)
    if published:
        return f"{PROG}: {what} after the output was written completely: {', '.join(published)}"
    return (f"{PROG}: {what}; no output was written (the journal beside it keeps what was computed: the same "
            f"command resumes)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    logging.getLogger(PROG).warning("warning: %s", message)


def _fail(exc, code):
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
