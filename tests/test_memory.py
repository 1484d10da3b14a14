"""The driver's memory stays flat however many inputs stream through it.

A driver script feeds a generator of small structures to ``autoparallelize`` (2
workers, chunks of 50) and prints its own peak resident set size; the peak for 50,000
structures must be within 1.5x of the peak for 5,000.  Holding the inputs or the
outputs of the whole run in memory (about 3 kB per structure here) would put 50,000
structures' worth, well over 100 MB, on top of a baseline of under 100 MB.

Each run is a fresh process, so imports and allocator state are the same for both sizes.
``ru_maxrss`` of ``RUSAGE_SELF`` counts the driver only, not its workers; but Linux
carries into it the high-water mark of the process that execs into the driver, so a
driver started straight from pytest (which may be hundreds of MB into a full run) would
report at least pytest's size.  The driver is therefore started by a shell that forks
it (no exec of its own), and it also reports ``VmHWM`` (the peak of its own address
space, reset by exec); both must stay flat.
"""

import json
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import driver_env

SMALL, LARGE = 5_000, 50_000

DRIVER = textwrap.dedent("""
    import json, resource, sys
    from ase import Atoms
    from wfl_like import OutputSpec
    from wfl_like.autoparallelize import autoparallelize

    def touch(items):
        for atoms in items:
            atoms.info["touched"] = True
        return items

    def structures(n, produced):
        for i in range(n):
            atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[4, 4, 4], pbc=True)
            atoms.info["label"] = i
            produced[0] += 1
            yield atoms

    if __name__ == "__main__":
        n, out = int(sys.argv[1]), sys.argv[2]
        produced = [0]
        outputs = None if out == "none" else OutputSpec(out)
        result = autoparallelize(touch, structures(n, produced), outputs, autopara_info={
            "num_python_subprocesses": 2, "num_inputs_per_python_subprocess": 50})
        with open("/proc/self/status") as f:
            hwm = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0]
        print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "hwm_kb": hwm,
                          "produced": produced[0], "returned_none": result is None}))
""")


def start(tmp_path, n, output):
    script = tmp_path / "driver.py"
    if not script.exists():
        script.write_text(DRIVER)
    target = "none" if output == "none" else str(tmp_path / f"out_{n}.xyz")
    # "; exit": the shell forks the driver instead of exec-ing into it (see the module docstring)
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, str(script), str(n), target]
    return subprocess.Popen(command, cwd=tmp_path, env=driver_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    # generous: the "file" case takes a minute on a loaded 2-core machine; below the test's limit
    stdout, stderr = proc.communicate(timeout=540)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def written_labels(path):
    """Labels of the structures of an extended XYZ file, read from its comment lines."""
    text = path.read_text()
    n_frames = len(re.findall(r"^2\n", text, flags=re.MULTILINE))     # atom-count lines
    labels = [int(value) for value in re.findall(r"^Lattice=.* label=(\d+)", text, flags=re.MULTILINE)]
    assert len(labels) == n_frames
    return labels


@pytest.mark.timeout(600)
@pytest.mark.parametrize("output", ["file", "none"])
def test_peak_memory_does_not_grow_with_the_number_of_inputs(tmp_path, output):
    # both sizes at once: the driver writing the file is the slow part, and peak RSS
    # does not depend on what else runs
    runs = {n: start(tmp_path, n, output) for n in (SMALL, LARGE)}
    reports = {n: finish(proc) for n, proc in runs.items()}
    for n, report in reports.items():
        assert report["produced"] == n
        assert report["returned_none"] is (output == "none")
    for measure in ("maxrss_kb", "hwm_kb"):
        small, large = reports[SMALL][measure], reports[LARGE][measure]
        print(f"peak RSS of the driver ({measure}), outputs={output}: {SMALL} items {small / 1024:.1f} MiB, "
              f"{LARGE} items {large / 1024:.1f} MiB")
        assert large <= 1.5 * small, f"{measure}: {large} kB for {LARGE} items vs {small} kB for {SMALL}"
    if output == "file":
        for n in (SMALL, LARGE):
            path = tmp_path / f"out_{n}.xyz"
            assert written_labels(path) == list(range(n))
            with open(path) as f:
                assert "touched=T" in f.read(100_000)
            assert not (tmp_path / f".out_{n}.xyz.partial").exists()
