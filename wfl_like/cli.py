"""The ``wfl-like`` command line."""

import argparse
import ast
import importlib
import inspect
import logging
import os
import signal
import sys
import warnings

from wfl_like.autoparallelize import mpipool_support
from wfl_like.autoparallelize.mpipool_support import MPIPOOL_ENV
from wfl_like.configset import OutputSpec
from wfl_like.errors import InputFileError, JournalError, OutputIsInputError, OutputLockedError
from wfl_like.stopping import Terminated, stop_on_signals

PROG = "wfl-like"
DEFAULT_CALCULATOR = "ase.calculators.emt:EMT"

# Exit codes: 2 for bad input (as argparse does), 1 for a failure during the run,
# 128 + signal number when stopped by a signal.
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _chunk_size(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1 or 'auto'")
    return value


def _process_count(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0 (0: no worker processes)")
    return value


def build_parser():
    """The argument parser of ``wfl-like`` and its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Apply per-structure operations to many atomic structures in parallel, "
                    "writing extended XYZ.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    calc = commands.add_parser(
        "calculate", help="evaluate an ASE calculator on every structure of the input",
        description="Evaluate an ASE calculator on every structure of INPUT (any file ASE reads) and "
                    "write them with the results (energy in info, forces in arrays, stress in info, "
                    "keys prefixed by the calculator's class name, e.g. EMT_energy) to OUTPUT. "
                    "A structure on which the calculator fails is written with "
                    "<prefix>calculation_failed=True. If OUTPUT exists and --overwrite is not given, "
                    "nothing is recomputed.",
        epilog="Example: wfl-like calculate in.xyz -o out.xyz -n 4 "
               "--calculator ase.calculators.lj:LennardJones -k sigma=2.3 -k epsilon=0.4")
    calc.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="input file(s) or glob(s); several give one group per file in the output")
    calc.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                      help="output file; its extension picks the format (.xyz: extended XYZ)")
    calc.add_argument("-c", "--calculator", default=DEFAULT_CALCULATOR, metavar="MODULE:CLASS",
                      help=f"calculator class to construct, importable as MODULE:CLASS (default {DEFAULT_CALCULATOR})")
    calc.add_argument("-k", "--calc-kwarg", action="append", default=[], metavar="KEY=VALUE",
                      help="keyword argument of the calculator; VALUE is read as a Python literal "
                           "(number, True, [1, 2], 'text') or else as a string; repeat for several")
    calc.add_argument("-p", "--properties", default="energy,forces,stress", metavar="LIST",
                      help="comma-separated properties to compute (default energy,forces,stress)")
    calc.add_argument("--prefix", default="_auto_",
                      help="prefix of the stored keys (default: calculator class name + '_')")
    calc.add_argument("-n", "--num-processes", type=_process_count, default=None, metavar="N",
                      help="worker processes (default: $WFL_NUM_PYTHON_SUBPROCESSES, else serial)")
    calc.add_argument("--chunk-size", type=_chunk_size, default=None, metavar="M",
                      help="structures per call of the calculator loop, or 'auto' to size chunks so each "
                           "takes about 0.2 s (default 10)")
    calc.add_argument("--overwrite", action="store_true", help="recompute and replace an existing OUTPUT")
    calc.add_argument("--mpi", action="store_true",
                      help="run on the ranks of an MPI job (mpiexec -n N wfl-like calculate ... --mpi): rank 0 "
                           "reads and writes, the others compute; also on when $WFL_MPIPOOL is set")
    calc.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    calc.set_defaults(run=run_calculate)

    status = commands.add_parser(
        "status", help="show how far the run that writes OUTPUT got",
        description="Show, from the journal kept beside OUTPUT, the operation and arguments of the run "
                    "that writes it, and how many input items are done, failed and pending, with the "
                    "reason of each failure. Works while the run is going on, and after it was killed.")
    status.add_argument("output", metavar="OUTPUT", help="the output file of a wfl_like run")
    status.add_argument("--failures", type=int, default=20, metavar="N",
                        help="list at most N failed items (default 20)")
    status.set_defaults(run=run_status)
    return parser


def _version():
    from wfl_like import __version__

    return __version__


def parse_calculator(spec, kwarg_texts):
    """``"module:Class"`` and ``["key=value", ...]`` -> ``(Class, (), kwargs)``.

    Raises
    ------
    UsageError
        The class cannot be imported or a keyword argument is malformed.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"calculator {spec!r} must be given as MODULE:CLASS, e.g. {DEFAULT_CALCULATOR}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import calculator module {module_name!r}: {exc}") from None
    try:
        constructor = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no calculator {attr!r}") from None
    if not (isinstance(constructor, type) and hasattr(constructor, "get_property")):
        raise UsageError(f"{spec!r} is not an ASE calculator class")
    kwargs = {}
    for text in kwarg_texts:
        key, sep, value = text.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"calculator keyword argument {text!r} must be KEY=VALUE")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    try:
        inspect.signature(constructor).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"calculator {spec!r} does not take these arguments: {exc}") from None
    except ValueError:
        pass    # no signature to check against
    # ASE calculators take any keyword silently; a name they do not know is likely a typo
    known = getattr(constructor, "default_parameters", None) or {}
    unknown = sorted(set(kwargs) - set(known))
    if known and unknown:
        logging.getLogger(PROG).warning("%s does not list %s among its parameters %s; passing them anyway",
                                        attr, unknown, sorted(known))
    return constructor, (), kwargs


def run_calculate(args):
    """``wfl-like calculate``: returns the exit code."""
    from wfl_like.calculators.generic import calculate, check_properties
    from wfl_like.configset import ConfigSet

    calculator = parse_calculator(args.calculator, args.calc_kwarg)
    properties = [p.strip() for p in args.properties.split(",") if p.strip()]
    if not properties:
        raise UsageError("--properties is empty")
    try:
        check_properties(calculator, properties)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--properties: {exc}") from None
    try:
        inputs = ConfigSet(args.inputs[0] if len(args.inputs) == 1 else args.inputs)
        outputs = OutputSpec(args.output, overwrite=args.overwrite)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    autopara_info = {}
    if args.num_processes is not None:
        autopara_info["num_python_subprocesses"] = args.num_processes
    if args.chunk_size is not None:
        autopara_info["num_inputs_per_python_subprocess"] = args.chunk_size
    try:
        calculate(inputs, outputs, calculator, properties=properties, output_prefix=args.prefix,
                  autopara_info=autopara_info)
    except (KeyboardInterrupt, Terminated) as stop:
        # the stop may come after the output was published: the message must say so
        stop.published = [str(path) for path in outputs.published]
        raise
    if outputs.n_stored:
        logging.getLogger(PROG).info("wrote %d structures to %s", outputs.n_stored, args.output)
    return 0


def run_status(args):
    """``wfl-like status``: print the journal's summary; returns the exit code."""
    import sqlite3

    from wfl_like.autoparallelize.journal import journal_path
    from wfl_like.errors import JournalError

    path = journal_path(args.output)
    if not path.exists():
        raise UsageError(f"no journal for {args.output!r} (expected {str(path)!r}): it was not written by "
                         f"wfl_like, or with the cache off")
    try:
        lines = _status_lines(args, path)
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
    from wfl_like.autoparallelize.journal import Journal

    with Journal(path, read_only=True) as journal:
        call = journal.meta("call") or {}
        counts = journal.counts()
        n_items = journal.meta("n_items")
        complete = journal.meta("complete") is True
        failures = journal.failures(limit=args.failures)
    pending = (f"{n_items - counts['done'] - counts['failed']}" if complete and n_items is not None
               else "unknown until the input has been read to its end")
    arguments = ", ".join([str(a) for a in call.get("args", [])]
                          + [f"{k}={v}" for k, v in dict(call.get("kwargs", {})).items()])
    lines = [f"output:    {args.output} ({'complete' if complete else 'not complete'})",
             f"operation: {call.get('op', '?')}({arguments})",
             f"items:     {counts['done']} done, {counts['failed']} failed, {pending} pending"]
    lines += [f"  item {index}: {reason}" for index, reason in failures]
    if counts["failed"] > len(failures):
        lines.append(f"  ... and {counts['failed'] - len(failures)} more")
    return lines


def main(argv=None):
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if getattr(args, "mpi", False) or os.environ.get(MPIPOOL_ENV):
            os.environ[MPIPOOL_ENV] = os.environ.get(MPIPOOL_ENV) or "1"
            mpipool_support.init()      # worker ranks serve rank 0 from here, and leave at its end
        logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                            format=f"{PROG}: %(message)s", stream=sys.stderr)
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
