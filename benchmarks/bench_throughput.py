"""File-to-file throughput of a cheap operation: wfl_like against wfl 0.3.5, side by side.

An identity operation (``def identity(items): return items``) runs over an extended-XYZ
dataset of rattled 32-atom Cu cells that carry a stored energy and forces (as a
SinglePointCalculator writes them), from the input file to a fresh output file, serial and
with worker processes, chunks of 100 (and, for wfl_like, ``"auto"``).  Every run is a
separate ``python`` process timed from start to exit, as a user's script would be, and
always a first run: a fresh output directory, so nothing is reused from a journal.  The
runs of all columns are interleaved round by round and the medians are printed, with the
ratios the throughput issue sets goals for.

wfl 0.3.5 is installed into an environment of its own under the cache directory (with the
same ASE and numpy versions as this interpreter, so both codes parse and write with the
same ASE); its columns are skipped, with a line saying why, where that cannot be done.

Run from the repository root:  python benchmarks/bench_throughput.py [--quick]
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

WFL_VERSION = "0.3.5"
# what wfl 0.3.5 imports on the way to ConfigSet, OutputSpec and autoparallelize; its other
# requirements (pandas, spglib, universalSOAP, click) serve parts this benchmark does not load
WFL_PACKAGES = [f"wfl=={WFL_VERSION}", "expyre-wfl", "docstring_parser", "pyyaml"]
DEFAULT_WFL_ENV = Path.home() / ".cache" / "wfl_like" / "bench-wfl"

WFL_LIKE_DRIVER = textwrap.dedent("""
    import sys
    from wfl_like import ConfigSet, OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def identity(items):
        return items

    if __name__ == "__main__":
        source, target, workers, chunk = sys.argv[1:5]
        autoparallelize(identity, ConfigSet(source), OutputSpec(target),
                        autopara_info={"num_python_subprocesses": int(workers),
                                       "num_inputs_per_python_subprocess": chunk if chunk == "auto" else int(chunk)})
""")

# wfl takes its number of workers from WFL_NUM_PYTHON_SUBPROCESSES, as its users set it
WFL_DRIVER = textwrap.dedent("""
    import sys
    from wfl.configset import ConfigSet, OutputSpec
    from wfl.autoparallelize import autoparallelize

    def identity(items):
        return items

    if __name__ == "__main__":
        source, target, workers, chunk = sys.argv[1:5]
        autoparallelize(identity, ConfigSet(source), OutputSpec(target),
                        autopara_info={"num_inputs_per_python_subprocess": int(chunk)})
""")


def write_dataset(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` rattled 32-atom Cu cells with a stored energy and forces to ``path``.

    The energy and forces are a harmonic model of the displacements (no calculation is
    needed), with full-precision floats as a DFT or potential run would store them.
    """
    rng = np.random.default_rng(seed)
    ideal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    spring = 2.0    # eV/A^2
    with open(path, "w") as handle:
        for start in range(0, n, 1000):
            batch = []
            for _ in range(start, min(n, start + 1000)):
                atoms = ideal.copy()
                strain = 1.0 + rng.normal(0.0, 0.01)
                atoms.set_cell(ideal.cell * strain, scale_atoms=True)
                displacement = rng.normal(0.0, 0.05, size=(len(atoms), 3))
                atoms.positions += displacement
                energy = -3.49 * len(atoms) + 0.5 * spring * float(np.sum(displacement ** 2))
                atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=-spring * displacement)
                atoms.info["config_type"] = "rattled"
                batch.append(atoms)
            ase.io.write(handle, batch, format="extxyz")


def wfl_python(env_dir: Path, wanted: bool) -> Path | None:
    """The interpreter of an environment holding wfl 0.3.5, made if needed; None (and a
    line saying why) where it cannot be had."""
    if not wanted:
        print("wfl columns skipped: --skip-wfl")
        return None
    python = env_dir / "bin" / "python"
    # the environment is reused while it holds wfl 0.3.5 and the same ASE as this interpreter
    wanted_versions = f"{WFL_VERSION} {ase.__version__}"
    check = [str(python), "-c", "import ase, wfl; print(wfl.__version__, ase.__version__)"]
    if python.exists() and _output(check) == wanted_versions:
        return python
    print(f"installing wfl {WFL_VERSION} into {env_dir} (once) ...", flush=True)
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(env_dir)],
             [str(python), "-m", "pip", "install", "-q", "--no-deps", *WFL_PACKAGES],
             # the same ASE and numpy as wfl_like runs with (numpy with --no-deps would skip
             # ASE's own requirements, scipy and matplotlib)
             [str(python), "-m", "pip", "install", "-q", f"ase=={ase.__version__}", f"numpy=={np.__version__}"]]
    log = env_dir.parent / "bench-wfl-install.log"
    with open(log, "w") as handle:
        for step in steps:
            if subprocess.run(step, stdout=handle, stderr=subprocess.STDOUT).returncode != 0:
                print(f"wfl columns skipped: `{' '.join(step[2:])}` failed (the registry may not have "
                      f"wfl {WFL_VERSION}); see {log}")
                return None
    if _output(check) != wanted_versions:
        print(f"wfl columns skipped: wfl {WFL_VERSION} installed into {env_dir} but does not import; see {log}")
        return None
    return python


def _output(command: list[str]) -> str | None:
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


class Column:
    """One way of running the dataset: which code, how many workers, which chunk size."""

    def __init__(self, label: str, python: Path, driver: Path, workers: int, chunk: str):
        self.label, self.python, self.driver, self.workers, self.chunk = label, python, driver, workers, chunk
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.sizes: tuple[int, int] | None = None    # (output bytes, journal bytes) of the first run

    def run(self, source: Path, workdir: Path) -> Path:
        """Run once in a fresh ``workdir``; returns the output file."""
        workdir.mkdir(parents=True)
        target = workdir / "out.xyz"
        env = dict(os.environ, WFL_NUM_PYTHON_SUBPROCESSES=str(self.workers))
        command = [str(self.python), str(self.driver), str(source), str(target), str(self.workers), self.chunk]
        log = workdir / "run.log"
        with open(log, "w") as handle:
            start = time.perf_counter()
            process = subprocess.Popen(command, env=env, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT)
            # wait4 gives the CPU time of the driver and of the workers it reaped: a figure a
            # busy machine disturbs much less than the wall time
            _, status, usage = os.wait4(process.pid, 0)
            elapsed = time.perf_counter() - start
        process.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0 or not target.exists():
            raise RuntimeError(f"{self.label} failed (exit {code}):\n{log.read_text()[-3000:]}")
        self.times.append(elapsed)
        self.cpu_times.append(usage.ru_utime + usage.ru_stime)
        if self.sizes is None:
            self.sizes = (target.stat().st_size, side_files_size(workdir))
        return target

    @property
    def median(self) -> float:
        return statistics.median(self.times)


IMPORTS = {"wfl_like": "from wfl_like import ConfigSet, OutputSpec\n"
                       "from wfl_like.autoparallelize import autoparallelize",
           "wfl": "from wfl.configset import ConfigSet, OutputSpec\n"
                  "from wfl.autoparallelize import autoparallelize"}


def time_imports(python: Path, code: str) -> float:
    """Whole-process time of starting Python and importing what a driver imports: the
    part of every column's time that does not depend on the number of structures."""
    start = time.perf_counter()
    subprocess.run([str(python), "-c", IMPORTS[code]], check=True)
    return time.perf_counter() - start


def side_files_size(workdir: Path) -> int:
    """Bytes of everything a run left beside its output that names itself a journal (a
    file, or the files of a folder)."""
    return sum(path.stat().st_size for path in workdir.rglob("*")
               if path.is_file() and "journal" in str(path.relative_to(workdir)))


def same_structures(first: Path, second: Path) -> str:
    """'' when the two files read back (ase.io.read) to the same numbers, else what differs."""
    a, b = ase.io.read(first, ":"), ase.io.read(second, ":")
    if len(a) != len(b):
        return f"{len(a)} structures against {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        checks = {"numbers": np.array_equal(x.numbers, y.numbers),
                  "positions": np.array_equal(x.positions, y.positions),
                  "cell": np.array_equal(x.cell.array, y.cell.array),
                  "pbc": np.array_equal(x.pbc, y.pbc),
                  "energy": _stored(x, "energy") == _stored(y, "energy"),
                  "forces": np.array_equal(_stored(x, "forces"), _stored(y, "forces")),
                  "config_type": x.info.get("config_type") == y.info.get("config_type")}
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            return f"structure {i}: {', '.join(wrong)} differ"
    return ""


def _stored(atoms, name):
    """A result stored with the structure (None where it has none)."""
    return atoms.calc.results.get(name) if atoms.calc is not None else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 structures instead of 50,000")
    parser.add_argument("--n", type=int, default=None, help="number of structures")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel columns (default 2)")
    parser.add_argument("--chunk", type=int, default=100, help="structures per chunk (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are shown (default 3)")
    parser.add_argument("--no-auto", action="store_true", help="skip wfl_like's chunk 'auto'")
    parser.add_argument("--skip-wfl", action="store_true", help="wfl_like columns only")
    parser.add_argument("--wfl-env", type=Path, default=DEFAULT_WFL_ENV,
                        help=f"environment to hold wfl {WFL_VERSION} (default {DEFAULT_WFL_ENV})")
    parser.add_argument("--keep", type=Path, default=None, help="keep the dataset and outputs under this directory")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    workers = args.workers

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"wfl_like throughput benchmark -- {platform.node()} ({platform.system()} {platform.machine()}), "
          f"os.cpu_count()={os.cpu_count()}, load average {load}, python {platform.python_version()}, "
          f"ase {ase.__version__}, numpy {np.__version__}")
    print(f"identity op, file to file, {n} 32-atom Cu cells with stored energy and forces, "
          f"{workers} workers, medians of {args.repeats} interleaved rounds, whole-process times, first runs")
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("WARNING: the machine is busy (load above half its cores): other processes compete with these "
              "runs, so the wall times and ratios below vary a lot; quote figures from a quiet machine")
    wfl = wfl_python(args.wfl_env, not args.skip_wfl)

    root = Path(tempfile.mkdtemp(prefix="bench-throughput-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        run_all(args, n, workers, wfl, root)
        print(f"\nthe benchmark took {(time.perf_counter() - start) / 60:.1f} min; load average at the end "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def run_all(args, n, workers, wfl, root):
    source = root / "in.xyz"
    start = time.perf_counter()
    write_dataset(source, n)
    print(f"dataset: {source.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - start:.1f} s (untimed)\n")
    (root / "wfl_like_driver.py").write_text(WFL_LIKE_DRIVER)
    (root / "wfl_driver.py").write_text(WFL_DRIVER)

    chunks = [str(args.chunk)] + ([] if args.no_auto else ["auto"])
    columns = {}
    for chunk in chunks:
        if wfl is not None and chunk != "auto":
            for w in (0, workers):
                columns[("wfl", w, chunk)] = Column(f"wfl {w} workers chunk {chunk}", wfl, root / "wfl_driver.py",
                                                    w, chunk)
        for w in (0, workers):
            columns[("wfl_like", w, chunk)] = Column(f"wfl_like {w} workers chunk {chunk}", Path(sys.executable),
                                                     root / "wfl_like_driver.py", w, chunk)

    pythons = {"wfl_like": Path(sys.executable)} | ({"wfl": wfl} if wfl is not None else {})
    for code, python in pythons.items():
        time_imports(python, code)     # untimed: the first import also compiles the bytecode
    startup = {code: [] for code in pythons}
    kept = {}
    for round_i in range(args.repeats):
        for code, python in pythons.items():
            startup[code].append(time_imports(python, code))
        for key, column in columns.items():
            workdir = root / f"run-{round_i}-{'-'.join(map(str, key))}"
            output = column.run(source, workdir)
            if round_i == 0 and key[2] == chunks[0]:
                kept[key] = output
            else:
                shutil.rmtree(workdir)
        print(f"round {round_i + 1}/{args.repeats} done", flush=True)

    print_table(columns, chunks, workers, wfl is not None)
    print("python start-up + imports only (median): "
          + ", ".join(f"{code} {statistics.median(times):.2f} s" for code, times in startup.items()))
    print_ratios(columns, chunks[0], workers, wfl is not None)
    print_sizes(columns, chunks, workers)
    print_checks(kept, source, chunks[0], workers)


def _cell(columns, key, cpu=False):
    column = columns.get(key)
    if column is None:
        return f"{'n/a':>10}"
    return f"{statistics.median(column.cpu_times if cpu else column.times):8.2f} s"


def print_table(columns, chunks, workers, with_wfl):
    header = ["chunk", "wfl serial", f"wfl {workers} w", "wfl_like serial", f"wfl_like {workers} w"]
    for cpu in (False, True):
        print("\n" + ("CPU time of the driver and its workers, medians" if cpu else "wall time of the whole process, "
                     "medians"))
        print(" | ".join(f"{h:>15}" for h in header))
        for chunk in chunks:
            cells = [_cell(columns, (code, w, chunk), cpu) for code in ("wfl", "wfl_like") for w in (0, workers)]
            print(" | ".join(f"{c:>15}" for c in [chunk] + cells))
    if not with_wfl:
        print("(wfl columns skipped, see above)")
    print("all runs, wall (CPU of the driver and its workers) in s:")
    for column in columns.values():
        runs = ", ".join(f"{t:.2f} ({cpu:.2f})" for t, cpu in zip(column.times, column.cpu_times))
        print(f"  {column.label:32s} {runs}")


def print_ratios(columns, chunk, workers, with_wfl):
    like_serial, like_parallel = columns[("wfl_like", 0, chunk)], columns[("wfl_like", workers, chunk)]
    print(f"\nratios (chunk {chunk}):")
    if with_wfl:
        wfl_parallel = columns[("wfl", workers, chunk)]
        _ratio_line(f"wfl / wfl_like at {workers} workers", wfl_parallel.median / like_parallel.median, 5)
        _ratio_line("wfl / wfl_like serial", columns[("wfl", 0, chunk)].median / like_serial.median)
    ratio = like_serial.median / like_parallel.median
    _ratio_line(f"wfl_like serial / wfl_like {workers} workers", ratio, 1.6)
    auto = columns.get(("wfl_like", workers, "auto"))
    if auto is not None:
        _ratio_line(f"wfl_like {workers} workers, chunk {chunk} / chunk 'auto'", like_parallel.median / auto.median)


def _ratio_line(what, ratio, goal=None):
    verdict = f"   (goal >= {goal:g}x: {'met' if ratio >= goal else 'not met'})" if goal is not None else ""
    print(f"  {what:44s} {ratio:5.2f}x{verdict}")


def print_sizes(columns, chunks, workers):
    print("\njournal beside the output (first run of each wfl_like column):")
    for chunk in chunks:
        for w in (0, workers):
            column = columns[("wfl_like", w, chunk)]
            output, journal = column.sizes
            kept = f"journal {journal / 1e6:7.1f} MB ({journal / output:.2f}x the output)" if journal else "no journal"
            print(f"  {column.label:32s} output {output / 1e6:7.1f} MB, {kept}")


def print_checks(kept, source, chunk, workers):
    print("\nchecks (first round, chunk {}):".format(chunk))
    serial, parallel = kept[("wfl_like", 0, chunk)], kept[("wfl_like", workers, chunk)]
    print(f"  wfl_like {workers} workers wrote its serial output byte for byte: "
          f"{'yes' if serial.read_bytes() == parallel.read_bytes() else 'NO'}")
    difference = same_structures(source, parallel)
    print(f"  wfl_like output holds the input's structures (ase.io.read numbers equal): "
          f"{'yes' if not difference else 'NO: ' + difference}")
    if ("wfl", workers, chunk) in kept:
        difference = same_structures(kept[("wfl", workers, chunk)], parallel)
        print(f"  wfl and wfl_like outputs hold the same structures (ase.io.read numbers equal): "
              f"{'yes' if not difference else 'NO: ' + difference}")


if __name__ == "__main__":
    main()
