"""``wfl-like ... --slurm`` and ``--remote-info FILE``: queued jobs from the command line.

The argument checks need no cluster; the tests marked ``slurm`` run the command for real
against the local cluster of tests/slurm/start_local_slurm.sh (and skip where there is
none), with job names unique per test: other runs may share the cluster.
"""

import json
import signal
import subprocess
import sys
import uuid

import ase.io
import pytest
from helpers import assert_ok, assert_usage_error, cu_cells, driver_env, end_process_group, wait_for

from wfl_like.autoparallelize.remote import slurm
from wfl_like.autoparallelize.remote.results import read_lines
from wfl_like.cli import UsageError, build_parser, remote_info_of

RUN_TIMEOUT = 120
# the Slurm tests run several commands, each waiting on jobs
pytestmark = pytest.mark.timeout(3 * RUN_TIMEOUT + 60)

N_CELLS = 12
REGISTRY = ".out.xyz.journal.jobs/jobs"


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "wfl_like.cli", *[str(a) for a in args]], cwd=cwd,
                          env=driver_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)


def parsed(*args):
    return build_parser().parse_args([str(a) for a in args])


def unique_name():
    return f"wfl_like_cli_{uuid.uuid4().hex[:8]}"


def job_ids(registry):
    """The job ids of the ``job`` records of a state directory's registry, in order."""
    return [payload["job_id"] for _, payload in read_lines(registry, "")[0] if payload["kind"] == "job"]


@pytest.fixture
def cells(tmp_path):
    ase.io.write(tmp_path / "in.xyz", cu_cells(N_CELLS))


def write_json(path, content):
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


# --- the remote_info the options give (no cluster) ------------------------------------------------

def test_slurm_alone_gives_the_defaults_and_a_job_name_from_the_output():
    assert remote_info_of(parsed("calculate", "in.xyz", "-o", "runs/out put#1.xyz", "--slurm")) == {
        "sys_name": "slurm", "job_name": "out_put_1.xyz", "resources": {"max_time": "1h"},
        "num_inputs_per_queued_job": 100}


def test_slurm_options_shape_the_jobs():
    args = parsed("relax", "in.xyz", "-o", "out.xyz", "--slurm", "--job-name", "dft_sp", "--max-time", "2h",
                  "--per-job", "7", "--partition", "debug,long", "--job-cores", "2")
    assert remote_info_of(args) == {
        "sys_name": "slurm", "job_name": "dft_sp", "num_inputs_per_queued_job": 7,
        "resources": {"max_time": "2h", "partitions": ["debug", "long"], "num_cores": 2}}


def test_no_queued_jobs_without_the_options():
    assert remote_info_of(parsed("calculate", "in.xyz", "-o", "out.xyz")) is None


def test_a_remote_info_file_is_passed_as_written(tmp_path):
    content = {"sys_name": "slurm", "job_name": "dft_sp", "resources": {"max_time": "2h", "partitions": "debug"},
               "num_inputs_per_queued_job": 200, "pre_cmds": ["module load dft"], "wait_for_results": False}
    path = write_json(tmp_path / "remote.json", content)
    assert remote_info_of(parsed("md", "in.xyz", "-o", "out.xyz", "--steps", "1", "--dt", "1",
                                 "--remote-info", path)) == content


@pytest.mark.parametrize("command", [["calculate"], ["relax"], ["md", "--steps", "1", "--dt", "1"]])
@pytest.mark.parametrize("pair", [["--slurm", "--mpi"], ["--remote-info", "r.json", "--mpi"],
                                  ["--remote-info", "r.json", "--slurm"]])
def test_queued_jobs_and_mpi_exclude_each_other(command, pair):
    with pytest.raises(UsageError, match="not allowed with argument"):
        parsed(*command, "in.xyz", "-o", "out.xyz", *pair)


@pytest.mark.parametrize("args, words", [
    (["--slurm", "--job-name", "my job"], ["--job-name", "'my job'", "letters, digits"]),
    (["--slurm", "--max-time", "2 hours"], ["--max-time", "not a wall time"]),
    (["--slurm", "--max-time", "0m"], ["--max-time"]),
    (["--slurm", "--per-job", "0"], ["--per-job", ">= 1"]),
    (["--slurm", "--job-cores", "-1"], ["--job-cores"]),
    (["--slurm", "--partition", "debug;rm"], ["--partition", "partition name"]),
])
def test_bad_slurm_options_are_refused_by_the_parser(args, words):
    with pytest.raises(UsageError) as refused:
        parsed("calculate", "in.xyz", "-o", "out.xyz", *args)
    for word in words:
        assert word in str(refused.value)


@pytest.mark.parametrize("args, words", [
    (["--job-name", "x"], ["--job-name needs --slurm"]),
    (["--max-time", "2h", "--per-job", "3"], ["--max-time, --per-job need --slurm"]),
])
def test_job_options_need_slurm(args, words):
    with pytest.raises(UsageError) as refused:
        remote_info_of(parsed("calculate", "in.xyz", "-o", "out.xyz", *args))
    for word in words:
        assert word in str(refused.value)


@pytest.mark.parametrize("content, words", [
    ('{"sys_name": "slurm",', ["not valid JSON", "give a JSON file"]),
    ('[{"sys_name": "slurm"}]', ["holds a JSON list, not an object"]),
    ({"calculate": {"sys_name": "slurm", "job_name": "x", "resources": {"max_time": "1h"}}},
     ["maps names (calculate)", "WFL_EXPYRE_INFO="]),
    ({"sys_name": "slurm", "job_name": "x", "resources": {"max_time": "1h"}, "max_jobs": 3},
     ["unknown remote_info option 'max_jobs'", "the options are"]),
    ({"sys_name": "pbs", "job_name": "x", "resources": {"max_time": "1h"}}, ["sys_name 'pbs'"]),
    ({"sys_name": "slurm", "job_name": "x", "resources": {}}, ["lack max_time"]),
    ({"sys_name": "slurm", "resources": {"max_time": "1h"}}, ["lacks ['job_name']"]),
    ({"sys_name": "slurm", "job_name": "x", "resources": {"max_time": "1h"}, "input_files": ["a"]},
     ["'input_files' of wfl (ExPyRe) is not supported"]),
])
def test_bad_remote_info_files_name_the_file_and_the_problem(tmp_path, content, words):
    path = write_json(tmp_path / "remote.json", content)
    with pytest.raises(UsageError) as refused:
        remote_info_of(parsed("calculate", "in.xyz", "-o", "out.xyz", "--remote-info", path))
    assert f"--remote-info {str(path)!r}" in str(refused.value)
    for word in words:
        assert word in str(refused.value)


# --- the same, as a user meets them: one line on stderr, exit status 2 -------------------------------

@pytest.mark.parametrize("args, words", [
    (["--remote-info", "missing.json"], ["--remote-info 'missing.json' cannot be read", "No such file",
                                         "give a JSON file"]),
    (["--remote-info", "broken.json"], ["--remote-info 'broken.json' is not valid JSON"]),
    (["--remote-info", "typo.json"], ["--remote-info 'typo.json'", "unknown remote_info option 'job_nmae'"]),
    (["--slurm", "--mpi"], ["--mpi: not allowed with argument --slurm"]),
    (["--per-job", "5"], ["--per-job needs --slurm"]),
])
def test_argument_errors_are_one_line_exit_2(tmp_path, cells, args, words):
    write_json(tmp_path / "broken.json", "{")
    write_json(tmp_path / "typo.json", {"sys_name": "slurm", "job_nmae": "x", "resources": {"max_time": "1h"}})
    proc = run_cli("calculate", "in.xyz", "-o", "out.xyz", *args, cwd=tmp_path)
    assert_usage_error(proc, *words)
    assert not (tmp_path / "out.xyz").exists()
    assert not (tmp_path / ".out.xyz.journal.jobs").exists()


def test_mpipool_env_and_queued_jobs_are_refused(tmp_path, cells):
    proc = subprocess.run([sys.executable, "-m", "wfl_like.cli", "calculate", "in.xyz", "-o", "out.xyz", "--slurm"],
                          cwd=tmp_path, env=driver_env(WFL_MPIPOOL="1"), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert_usage_error(proc, "--slurm", "unset WFL_MPIPOOL")


# --- for real, on the local cluster ----------------------------------------------------------------

@pytest.mark.slurm
def test_slurm_output_equals_the_serial_one_and_the_same_command_submits_nothing(tmp_path, cells):
    assert_ok(run_cli("calculate", "in.xyz", "-o", "serial.xyz", cwd=tmp_path))
    # -n 0: each job computes in its own process (no pool), as the serial run did
    command = ["calculate", "in.xyz", "-o", "out.xyz", "--slurm", "--job-name", unique_name(), "--per-job", "5",
               "--max-time", "5m", "--job-cores", "1", "-n", "0"]
    try:
        first = run_cli(*command, cwd=tmp_path)
        assert_ok(first)
        assert "submitted job array" in first.stderr
        assert len(job_ids(tmp_path / REGISTRY)) == 1
        assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()
        assert len(list((tmp_path / ".out.xyz.journal.jobs").glob("task_*"))) == 3     # 12 cells, 5 per job

        registry = (tmp_path / REGISTRY).read_bytes()
        again = run_cli(*command, cwd=tmp_path)
        assert_ok(again)
        assert "submitted" not in again.stderr
        assert (tmp_path / REGISTRY).read_bytes() == registry
        assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()
    finally:
        for job_id in job_ids(tmp_path / REGISTRY):
            slurm.cancel(job_id)


@pytest.mark.slurm
def test_a_killed_driver_rerun_collects_its_jobs_without_submitting_again(tmp_path, cells):
    assert_ok(run_cli("calculate", "in.xyz", "-o", "serial.xyz", cwd=tmp_path))
    # the jobs wait a little, so that the driver is killed while they are queued or running
    write_json(tmp_path / "remote.json", {
        "sys_name": "slurm", "job_name": unique_name(), "resources": {"max_time": "5m", "num_cores": 1},
        "num_inputs_per_queued_job": 4, "pre_cmds": ["sleep 3"], "check_interval": 0.5,
        "env_vars": {"WFL_NUM_PYTHON_SUBPROCESSES": "0"}})
    command = [sys.executable, "-m", "wfl_like.cli", "calculate", "in.xyz", "-o", "out.xyz",
               "--remote-info", "remote.json"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=driver_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: (tmp_path / REGISTRY).exists() and job_ids(tmp_path / REGISTRY), timeout=60), \
            "no job submitted"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=RUN_TIMEOUT)
        assert driver.returncode == 128 + signal.SIGTERM, stderr
        assert not (tmp_path / "out.xyz").exists()

        rerun = subprocess.run(command, cwd=tmp_path, env=driver_env(), capture_output=True, text=True,
                               timeout=RUN_TIMEOUT)
        assert_ok(rerun)
        assert "submitted" not in rerun.stderr
        assert len(job_ids(tmp_path / REGISTRY)) == 1
        assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()
    finally:
        end_process_group(driver)
        for job_id in job_ids(tmp_path / REGISTRY):
            slurm.cancel(job_id)


@pytest.mark.slurm
def test_not_waiting_leaves_the_output_unwritten_and_a_later_command_collects(tmp_path, cells):
    assert_ok(run_cli("calculate", "in.xyz", "-o", "serial.xyz", cwd=tmp_path))
    settings = {"sys_name": "slurm", "job_name": unique_name(), "resources": {"max_time": "5m", "num_cores": 1},
                "num_inputs_per_queued_job": 6, "pre_cmds": ["sleep 2"], "check_interval": 0.5,
                "env_vars": {"WFL_NUM_PYTHON_SUBPROCESSES": "0"}}
    write_json(tmp_path / "submit.json", {**settings, "wait_for_results": False})
    write_json(tmp_path / "collect.json", settings)
    try:
        submitted = run_cli("calculate", "in.xyz", "-o", "out.xyz", "--remote-info", "submit.json", cwd=tmp_path)
        assert_ok(submitted)
        assert "out.xyz is not written yet" in submitted.stderr
        assert not (tmp_path / "out.xyz").exists()
        assert len(job_ids(tmp_path / REGISTRY)) == 1

        collected = run_cli("calculate", "in.xyz", "-o", "out.xyz", "--remote-info", "collect.json", cwd=tmp_path)
        assert_ok(collected)
        assert "submitted" not in collected.stderr
        assert len(job_ids(tmp_path / REGISTRY)) == 1
        assert (tmp_path / "out.xyz").read_bytes() == (tmp_path / "serial.xyz").read_bytes()
    finally:
        for job_id in job_ids(tmp_path / REGISTRY):
            slurm.cancel(job_id)
