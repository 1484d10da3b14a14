"""The progress bar: drawn on a real terminal (a pty), not into a pipe, as the options and env var say."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import ase.io
import pytest

from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.progress import PROGRESS_ENV, public_name, show_bar
from helpers import BIN, MPIEXEC, cu_cells

EMT_CALC = "ase.calculators.emt:EMT"
RUN_TIMEOUT = 120


def env_without_progress(**extra):
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}
    env.update(WFL_NUM_PYTHON_SUBPROCESSES="0", **extra)
    return env


def cli_on_a_terminal(args, cwd, env):
    """Run the command line with its stderr on a pty; everything it drew there, and its exit status."""
    return on_a_terminal([sys.executable, "-m", "wfl_like.cli", *args], cwd, env)


def on_a_terminal(command, cwd, env):
    """Run ``command`` with its stderr on a pty; everything it drew there, and its exit status."""
    controller, terminal = pty.openpty()
    # a terminal of 120 columns, as a person's is (a fresh pty has none)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=terminal)
    os.close(terminal)
    drawn = b""
    while True:
        ready, _, _ = select.select([controller], [], [], RUN_TIMEOUT)
        if not ready:
            proc.kill()
            pytest.fail(f"nothing drawn for {RUN_TIMEOUT} s; so far: {drawn!r}")
        try:
            data = os.read(controller, 65536)
        except OSError:        # the other end closed: the process is gone
            break
        if not data:
            break
        drawn += data
    os.close(controller)
    return proc.wait(timeout=RUN_TIMEOUT), drawn.decode("utf-8", "replace")


@pytest.fixture
def inputs(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(30))
    return tmp_path / "in.xyz"


def test_a_terminal_gets_a_bar_with_the_public_name_the_total_and_the_rate(inputs, tmp_path):
    status, drawn = cli_on_a_terminal(["calculate", inputs, "-o", tmp_path / "out.xyz", "-c", EMT_CALC],
                                      tmp_path, env_without_progress())
    assert status == 0, drawn
    bar = [line for line in drawn.replace("\r", "\n").splitlines() if line.startswith("calculate:")]
    assert bar and bar[-1].startswith("calculate: 100%") and "30/30" in bar[-1] and "item/s" in bar[-1], drawn
    # the log's summary line is still there, for whoever reads the log later
    assert "finished 30 items (0 failed)" in drawn


def test_a_pipe_gets_no_bar_only_what_the_log_says(inputs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wfl_like.cli", "calculate", inputs, "-o", tmp_path / "out.xyz",
                           "-c", EMT_CALC], cwd=tmp_path, env=env_without_progress(), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "item/s" not in proc.stderr and "%|" not in proc.stderr


def test_the_env_var_turns_the_bar_on_in_a_pipe_and_off_on_a_terminal(inputs, tmp_path):
    piped = subprocess.run([sys.executable, "-m", "wfl_like.cli", "calculate", inputs, "-o", tmp_path / "a.xyz",
                            "-c", EMT_CALC], cwd=tmp_path, env=env_without_progress(**{PROGRESS_ENV: "1"}),
                           capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert piped.returncode == 0 and "30/30" in piped.stderr, piped.stderr
    status, drawn = cli_on_a_terminal(["calculate", inputs, "-o", tmp_path / "b.xyz", "-c", EMT_CALC], tmp_path,
                                      env_without_progress(**{PROGRESS_ENV: "0"}))
    assert status == 0 and "30/30" not in drawn and "item/s" not in drawn, drawn


def half_fail(items):
    for atoms in items:
        if atoms.info["idx"] % 2:
            raise ValueError("odd")
    return items


def test_the_bar_counts_failed_items_and_knows_the_total_of_a_list(capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    with pytest.warns(UserWarning):
        autoparallelize(half_fail, cu_cells(10), OutputSpec(),
                        autopara_info={"progress": True, "errors": "skip", "fail_fast": False,
                                       "num_python_subprocesses": 0})
    drawn = capsys.readouterr().err.replace("\r", "\n")
    assert "half_fail: 100%" in drawn and "10/10" in drawn and "5 failed" in drawn, drawn


def test_progress_false_draws_nothing_even_when_the_env_var_asks(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    ase.io.write(tmp_path / "in.xyz", cu_cells(3))
    with pytest.warns(UserWarning):
        autoparallelize(half_fail, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info={"progress": False, "errors": "skip", "num_python_subprocesses": 0})
    assert "item" not in capsys.readouterr().err


def test_a_bad_env_var_value_is_named(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{PROGRESS_ENV}='maybe' is not 0 or 1"):
        show_bar(None)
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        autoparallelize(half_fail, cu_cells(1), OutputSpec(), autopara_info={"progress": "yes"})


@pytest.mark.parametrize("name, public", [("wfl_like.calculators.generic._calculate_op", "calculate"),
                                          ("wfl_like.generate.optimize._optimize_op", "optimize"),
                                          ("wfl_like.generate.md._md_op", "md"),
                                          ("__main__.my_op", "my"), ("tests.sleepy", "sleepy"), ("m.op", "op")])
def test_public_names(name, public):
    assert public_name(name) == public


def test_the_bar_file_total_comes_from_the_frame_index(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    ase.io.write(tmp_path / "in.xyz", cu_cells(7))
    with pytest.warns(UserWarning):
        autoparallelize(half_fail, ConfigSet(tmp_path / "in.xyz"), OutputSpec(tmp_path / "out.xyz"),
                        autopara_info={"progress": True, "errors": "skip", "num_python_subprocesses": 0})
    assert "7/7" in capsys.readouterr().err
    assert Path(tmp_path / "out.xyz").exists()


MPI_DRIVER = """
from wfl_like.autoparallelize import mpipool_support
mpipool_support.init()

from ase.calculators.emt import EMT
from wfl_like import ConfigSet, OutputSpec, autoparallelize
from wfl_like.calculators.generic import calculate


def nested_outer(items):
    # an autoparallelized call made by the operation, on a worker rank: it draws nothing
    return list(calculate(items, OutputSpec(), (EMT, [], {{}})))


autoparallelize(nested_outer, ConfigSet({inputs!r}), OutputSpec("out.xyz"),
                autopara_info={{"num_inputs_per_python_subprocess": 3}})
"""


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install the mpi extra)")
@pytest.mark.timeout(300)
def test_under_mpi_only_rank_0_draws_a_bar(inputs, tmp_path):
    pytest.importorskip("mpipool")
    (tmp_path / "driver.py").write_text(MPI_DRIVER.format(inputs=str(inputs)))
    env = {k: v for k, v in os.environ.items() if k != "WFL_NUM_PYTHON_SUBPROCESSES"}
    env.update({PROGRESS_ENV: "1", "WFL_MPIPOOL": "1", "PATH": BIN + os.pathsep + env.get("PATH", "")})
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "driver.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    states = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "%|" in line]
    # one bar, of the call rank 0 made (it starts once, and ends at 30/30); the worker ranks'
    # nested calls to calculate draw none
    assert states and all(line.startswith("nested_outer:") for line in states), proc.stderr
    assert sum(" 0/30 " in line for line in states) == 1 and "100%" in states[-1] and "30/30" in states[-1]
    assert len(ase.io.read(tmp_path / "out.xyz", ":")) == 30


def calls_another(items):
    return list(autoparallelize(half_fail, items, OutputSpec(), autopara_info={"progress": True}))


def test_a_call_made_by_an_operation_draws_no_bar_of_its_own(capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    autoparallelize(calls_another, [a for a in cu_cells(6) if a.info["idx"] % 2 == 0], OutputSpec(),
                    autopara_info={"progress": True, "num_python_subprocesses": 0,
                                   "num_inputs_per_python_subprocess": 1})
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "%|" in line]
    assert bars and bars[-1].startswith("calls_another: 100%") and "3/3" in bars[-1], bars
    # (log lines of the nested calls may be there, where an earlier test configured logging)
    assert all(line.startswith("calls_another:") for line in bars), bars


LOGGING_DRIVER = """
import logging, sys
from ase.build import bulk
from wfl_like import OutputSpec, autoparallelize

logging.basicConfig(level=logging.INFO, format="log: %(message)s")


def chatty(items):
    for atoms in items:
        logging.getLogger("chatty").info("item %d done", atoms.info["idx"])
    return items


cells = [bulk("Cu") for _ in range(5)]
for i, atoms in enumerate(cells):
    atoms.info["idx"] = i
autoparallelize(chatty, cells, OutputSpec(), autopara_info={"num_python_subprocesses": 0})
"""


def test_log_lines_written_while_the_bar_is_drawn_go_above_it_on_lines_of_their_own(tmp_path):
    # the op logs in the driver (a serial run), through the console handler of basicConfig
    (tmp_path / "driver.py").write_text(LOGGING_DRIVER)
    status, drawn = on_a_terminal([sys.executable, "driver.py"], tmp_path, env_without_progress())
    assert status == 0, drawn
    # what stays on each line (a terminal ends lines with \r\n)
    screen = [line.rstrip("\r").split("\r")[-1] for line in drawn.split("\n")]
    assert [line for line in screen if line.startswith("log: item")] == [f"log: item {i} done" for i in range(5)]
    assert not any("%|" in line and "log:" in line for line in screen), drawn
    assert any(line.startswith("chatty: 100%") and "5/5" in line for line in screen), drawn
