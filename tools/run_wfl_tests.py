"""Run wfl's own tests of the modules wfl_like mirrors against the installed wfl_like.

wfl's test files are taken from its source distribution on PyPI (downloaded once into a
cache folder) or from a folder given with ``--source``; only their imports are changed
(``wfl`` becomes ``wfl_like``).  Tests that need external programs (Quantum Espresso,
FHI-aims) or wfl-private names (a leading underscore) are left out, each with its reason.
Nothing of wfl's is kept in this repository.

Usage::

    python tools/run_wfl_tests.py [--source DIR ...] [--version 0.3.5] [pytest options]

(wfl 0.3.5's sdist lacks ``tests/calculators/test_calc_generic.py``; give a checkout of wfl's
repository with ``--source`` to run it too.)

Exit status: pytest's; 0 with a message when wfl's sources cannot be had (no network).
"""

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEFAULT_VERSION = "0.3.5"
TEST_FILES = ("tests/test_optimize.py", "tests/test_md.py", "tests/test_rng_determinism.py",
              "tests/test_outputspec.py", "tests/calculators/test_calc_generic.py")

# test id -> why it is left out
EXCLUDED = {
    "test_calc_generic.py::test_generic_DFT_autopara_defaults": "needs Quantum Espresso",
    "test_calc_generic.py::test_generic_autopara_defaults":
        "reads the line wfl writes straight to sys.stderr; wfl_like logs the same words "
        "('num_inputs_per_python_subprocess=N') through logging instead",
}

# imports of modules that need external programs, replaced by stand-ins that skip
_EXTERNAL_IMPORTS = {
    re.compile(r"^from tests\.calculators\.test_qe import espresso_avail\s*$", re.M):
        'espresso_avail = pytest.mark.skip(reason="needs Quantum Espresso")',
    re.compile(r"^from wfl\.calculators\.espresso import Espresso\s*$", re.M): "Espresso = None",
}


def cache_folder():
    """Where downloaded wfl sources are kept between runs."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "wfl_like" / "wfl-sources"


def fetch_sources(version):
    """The unpacked source distribution of wfl ``version``, downloading it if needed; None if it cannot be had."""
    folder = cache_folder()
    unpacked = folder / f"wfl-{version}"
    if unpacked.is_dir():
        return unpacked
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           f"wfl=={version}", "-d", str(folder)], capture_output=True, text=True)
    archives = sorted(folder.glob(f"wfl-{version}.tar.gz"))
    if done.returncode != 0 or not archives:
        print(f"run_wfl_tests: cannot download wfl {version}'s sources ({done.stderr.strip().splitlines()[-1:]}); "
              f"nothing run", file=sys.stderr)
        return None
    with tarfile.open(archives[0]) as archive:
        archive.extractall(folder, filter="data")
    return unpacked


def rewrite(text):
    """wfl's test text with its imports pointed at wfl_like."""
    for pattern, stand_in in _EXTERNAL_IMPORTS.items():
        text = pattern.sub(stand_in, text)
    text = re.sub(r"^(\s*)from wfl(\.|\s)", r"\1from wfl_like\2", text, flags=re.M)
    return re.sub(r"^(\s*)import wfl(\.|\s|$)", r"\1import wfl_like\2", text, flags=re.M)


def prepare(sources, workdir):
    """Copy the rewritten test files into ``workdir``, each from the first of ``sources`` that
    has it; the names of those found."""
    found = []
    for relative in TEST_FILES:
        paths = [Path(source) / relative for source in sources if (Path(source) / relative).is_file()]
        if not paths:
            print(f"run_wfl_tests: {relative} is in none of {[str(s) for s in sources]}; left out", file=sys.stderr)
            continue
        path = paths[0]
        target = Path(workdir) / path.name
        target.write_text(rewrite(path.read_text()))
        found.append(path.name)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", default=[],
                        help="an unpacked wfl source tree; repeat for several, the first holding a file wins "
                             "(default: the PyPI sdist)")
    parser.add_argument("--version", default=DEFAULT_VERSION,
                        help=f"wfl version to download (default {DEFAULT_VERSION})")
    args, pytest_args = parser.parse_known_args(argv)
    sources = args.source or [fetch_sources(args.version)]
    if None in sources:
        return 0
    with tempfile.TemporaryDirectory(prefix="wfl-tests-") as workdir:
        found = prepare(sources, workdir)
        if not found:
            print("run_wfl_tests: none of wfl's test files were found; nothing run", file=sys.stderr)
            return 1
        deselect = [arg for test_id in EXCLUDED if test_id.split("::")[0] in found
                    for arg in ("--deselect", test_id)]
        for test_id, why in EXCLUDED.items():
            if test_id.split("::")[0] in found:
                print(f"run_wfl_tests: left out {test_id}: {why}")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", workdir,
                   *deselect, *pytest_args, *found]
        return subprocess.run(command, cwd=workdir).returncode


if __name__ == "__main__":
    sys.exit(main())
