"""OUTPUT.manifest.json: what made an output, read by people and by ``wfl-like status``."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.calculators.generic import calculate
from wfl_like.cli import main as cli_main
from wfl_like.errors import AutoparallelizeError
from wfl_like.manifest import manifest_path, read_manifest
from helpers import cu_cells

HERE = Path(__file__).resolve().parent
SERIAL = {"num_python_subprocesses": 0}


def refuse_odd(items):
    for atoms in items:
        if atoms.info["idx"] % 2:
            raise ValueError(f"odd item {atoms.info['idx']}")
    return items


def test_a_complete_run_names_its_operation_inputs_versions_and_counts(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(6))
    out = tmp_path / "out.xyz"
    calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), (EMT, [], {}), autopara_info=SERIAL)
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["state"] == "complete" and manifest["operation"] == "calculate"
    assert manifest["inputs"] == [{"path": str((tmp_path / "in.xyz").resolve()),
                                   "sha256": hashlib.sha256((tmp_path / "in.xyz").read_bytes()).hexdigest()}]
    assert manifest["items"] == {"total": 6, "failed": 0, "computed": 6, "reused": 0}
    assert "EMT" in manifest["arguments"][0]
    assert {"python", "ase", "numpy", "wfl_like"} <= set(manifest["versions"])
    assert manifest["host"] and manifest["started"] <= manifest["finished"]
    # a rerun over one more structure computes that one only, and says so
    ase.io.write(tmp_path / "in.xyz", cu_cells(7))
    calculate(ConfigSet(tmp_path / "in.xyz"), OutputSpec(out), (EMT, [], {}), autopara_info=SERIAL)
    assert read_manifest(out)["items"] == {"total": 7, "failed": 0, "computed": 1, "reused": 6}


def test_failures_are_listed_with_their_reasons_and_a_stopped_run_says_why(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(4))
    out = tmp_path / "out.xyz"
    with pytest.warns(UserWarning):
        autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                        autopara_info={**SERIAL, "errors": "skip"})
    manifest = read_manifest(out)
    assert manifest["items"]["failed"] == 2
    assert manifest["failures"] == [{"index": 1, "reason": "ValueError: odd item 1"},
                                    {"index": 3, "reason": "ValueError: odd item 3"}]
    raised = tmp_path / "raised.xyz"
    with pytest.raises(AutoparallelizeError):
        autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(raised), autopara_info=SERIAL)
    manifest = read_manifest(raised)
    assert manifest["state"] == "stopped" and "AutoparallelizeError" in manifest["stopped_by"]
    assert not raised.exists()


def test_status_prints_the_manifest_and_exports_the_failed_inputs(tmp_path, capsys):
    cells = cu_cells(6)
    ase.io.write(tmp_path / "in.xyz", cells)
    out = tmp_path / "out.xyz"
    with pytest.warns(UserWarning):
        autoparallelize(refuse_odd, ConfigSet(tmp_path / "in.xyz"), OutputSpec(out),
                        autopara_info={**SERIAL, "errors": "skip"})
    assert cli_main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "made by:   refuse_odd on" in printed and "input:     " in printed and "versions:  python" in printed
    assert cli_main(["status", "--failed", str(out), "-o", str(tmp_path / "failed.xyz")]) == 0
    assert "wrote 3 failed or unfinished input structures" in capsys.readouterr().out
    failed = ase.io.read(tmp_path / "failed.xyz", ":")
    assert [a.info["idx"] for a in failed] == [1, 3, 5]
    assert np.array_equal(failed[0].positions, ase.io.read(tmp_path / "in.xyz", 1).positions)


KILLED_DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from wfl_like import ConfigSet, OutputSpec, autoparallelize

def die_at_5(items):
    for atoms in items:
        if atoms.info["idx"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    return items

autoparallelize(die_at_5, ConfigSet("in.xyz"), OutputSpec("out.xyz"), autopara_info={{"num_python_subprocesses": 0}})
"""


def test_a_killed_run_exports_its_unfinished_inputs(tmp_path, capsys):
    ase.io.write(tmp_path / "in.xyz", cu_cells(9))
    (tmp_path / "driver.py").write_text(KILLED_DRIVER.format(tests=str(HERE)))
    env = {k: v for k, v in os.environ.items() if k != "WFL_NUM_PYTHON_SUBPROCESSES"}
    proc = subprocess.run([sys.executable, "driver.py"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    out = tmp_path / "out.xyz"
    assert read_manifest(out)["state"] == "running"
    assert cli_main(["status", "--failed", str(out), "-o", str(tmp_path / "left.xyz")]) == 0
    left = [a.info["idx"] for a in ase.io.read(tmp_path / "left.xyz", ":")]
    # item 5 and after, and whatever finished before it but was not yet journaled when the kill came
    assert len(left) >= 4 and left == list(range(9 - len(left), 9))
    capsys.readouterr()


def test_failed_needs_its_output_file_and_inputs_in_files(tmp_path, capsys):
    out = tmp_path / "mem.xyz"
    calculate(cu_cells(2), OutputSpec(out), (EMT, [], {}), autopara_info=SERIAL)
    assert cli_main(["status", "--failed", str(out)]) == 2
    assert cli_main(["status", "--failed", str(out), "-o", str(tmp_path / "f.xyz")]) == 2
    err = capsys.readouterr().err
    assert "--failed and -o FILE go together" in err and "inputs were in memory" in err
