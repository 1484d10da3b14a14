"""RemoteInfo: wfl's remote_info names parsed, checked and turned into sbatch directives (no Slurm needed)."""

import json

import pytest

from wfl_like.autoparallelize.remote.remote_info import RemoteInfo, slurm_time, time_seconds

BASE = {"sys_name": "slurm", "job_name": "dft_sp", "resources": {"max_time": "2h"}}


def info(**changes):
    return RemoteInfo.from_autopara({**BASE, **changes}, "wfl_like.calculators.generic.calculate")


@pytest.fixture(autouse=True)
def _no_expyre_env(monkeypatch):
    monkeypatch.delenv("WFL_EXPYRE_INFO", raising=False)


def test_the_issue_example_gives_its_directives():
    remote = info(resources={"max_time": "2h", "num_nodes": 1, "partitions": "debug"}, num_inputs_per_queued_job=200)
    lines = remote.sbatch_directives(n_tasks=4, log_dir="logs")
    assert lines == ["#SBATCH --job-name=dft_sp", "#SBATCH --time=0-02:00:00", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks=1", "#SBATCH --exclusive", "#SBATCH --partition=debug",
                     "#SBATCH --array=0-3", "#SBATCH --output=logs/%x_%A_%a.out", "#SBATCH --error=logs/%x_%A_%a.err"]
    assert remote.items_per_job(1000) == 200
    assert (remote.retries, remote.check_interval) == (2, 5)


def test_cores_partitions_and_header_extra():
    remote = info(resources={"max_time": 90, "num_cores": 4, "partitions": ["a", "b"]},
                  header_extra=["#SBATCH --qos=debug", "--mem=4G"])
    lines = remote.sbatch_directives()
    assert "#SBATCH --cpus-per-task=4" in lines and "#SBATCH --exclusive" not in lines
    assert "#SBATCH --partition=a,b" in lines
    assert "#SBATCH --time=0-00:02:00" in lines     # 90 s rounded up to whole minutes
    assert lines[-2:] == ["#SBATCH --qos=debug", "#SBATCH --mem=4G"]
    assert not any("--array" in line for line in lines)


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("30m", 1800), ("90s", 90), ("1.5d", 129600),
                                           ("1:00:00", 3600), ("05:30", 330), ("1-12:00:00", 129600), (45, 45)])
def test_wall_times(text, seconds):
    assert time_seconds(text) == seconds


def test_slurm_time_format():
    assert slurm_time(7200) == "0-02:00:00"
    assert slurm_time(86400 + 61) == "1-00:02:00"


def test_negative_number_of_inputs_counts_in_python_subprocess_chunks_as_in_wfl():
    remote = info(num_inputs_per_queued_job=-3)
    assert remote.items_per_job(10) == 30
    assert remote.items_per_job(1) == 3
    assert remote.items_per_job("auto") == 3
    assert info().items_per_job(1) == 100       # wfl's default: 100 chunks per job


def test_setup_lines_quote_dict_values_and_keep_assignments_as_written():
    assert info(pre_cmds=["module load x"], env_vars={"OMP_NUM_THREADS": 1, "A": "b c"}).setup_lines() == \
        ["module load x", "export OMP_NUM_THREADS=1", "export A='b c'"]
    assert info(env_vars=["PATH=/opt/bin:$PATH"]).setup_lines() == ["export PATH=/opt/bin:$PATH"]


@pytest.mark.parametrize("changes, error, words", [
    ({"sys_name": "pbs"}, ValueError, "sys_name 'pbs'"),
    ({"sys_name": 3}, TypeError, "sys_name"),
    ({"job_name": "two words"}, ValueError, "job_name"),
    ({"resources": {"num_nodes": 1}}, ValueError, "max_time"),
    ({"resources": {"max_time": "soon"}}, ValueError, "max_time 'soon'"),
    ({"resources": {"max_time": 1.5}}, TypeError, "max_time"),
    ({"resources": {"max_time": "1h", "ncores": 2}}, ValueError, "ncores"),
    ({"resources": {"max_time": "1h", "num_nodes": 0}}, ValueError, "num_nodes"),
    ({"resources": {"max_time": "1h", "num_cores": "4"}}, TypeError, "num_cores"),
    ({"resources": {"max_time": "1h", "partitions": ["a b"]}}, ValueError, "partitions"),
    ({"resources": "2h"}, TypeError, "resources must be a dict"),
    ({"num_inputs_per_queued_job": 0}, ValueError, "num_inputs_per_queued_job"),
    ({"num_inputs_per_queued_job": True}, TypeError, "num_inputs_per_queued_job"),
    ({"header_extra": "--qos=x"}, TypeError, "header_extra"),
    ({"header_extra": ["qos=x"]}, ValueError, "header_extra entry 'qos=x'"),
    ({"pre_cmds": ["a\nb"]}, ValueError, "pre_cmds"),
    ({"env_vars": ["NOEQUALS"]}, ValueError, "env_vars entry 'NOEQUALS'"),
    ({"env_vars": {"1A": "x"}}, ValueError, "env_vars name '1A'"),
    ({"env_vars": {"A": [1]}}, TypeError, "env_vars['A']"),
    ({"retries": -1}, ValueError, "retries"),
    ({"check_interval": 0}, ValueError, "check_interval"),
    ({"post_cmds": ["x"]}, ValueError, "'post_cmds' of wfl"),
    ({"num_inputs_per_job": 3}, ValueError, "unknown remote_info option 'num_inputs_per_job'"),
])
def test_bad_values_name_the_key(changes, error, words):
    with pytest.raises(error) as caught:
        info(**changes)
    assert words in str(caught.value)


def test_missing_keys_and_wrong_type():
    with pytest.raises(ValueError, match="lacks"):
        RemoteInfo.from_autopara({"sys_name": "slurm"}, "m.f")
    with pytest.raises(TypeError, match="RemoteInfo or a dict"):
        RemoteInfo.from_autopara(["slurm"], "m.f")


def test_a_remote_info_passes_through_and_none_without_env_is_none():
    remote = info()
    assert RemoteInfo.from_autopara(remote, "m.f") is remote
    assert RemoteInfo.from_autopara(None, "m.f") is None


def test_env_json_keyed_by_operation_name_the_longest_match_wins(monkeypatch):
    table = {"calculate": {**BASE, "job_name": "short"}, "generic.calculate": {**BASE, "job_name": "long"},
             "other": {**BASE, "job_name": "other"}}
    monkeypatch.setenv("WFL_EXPYRE_INFO", json.dumps(table))
    assert RemoteInfo.from_autopara(None, "wfl_like.calculators.generic.calculate").job_name == "long"
    assert RemoteInfo.from_autopara(None, "mine.calculate").job_name == "short"
    assert RemoteInfo.from_autopara(None, "mine.recalculate") is None


def test_env_names_a_json_file(monkeypatch, tmp_path):
    path = tmp_path / "remote.json"
    path.write_text(json.dumps({"calculate": BASE}))
    monkeypatch.setenv("WFL_EXPYRE_INFO", str(path))
    assert RemoteInfo.from_autopara(None, "x.calculate").job_name == "dft_sp"


def test_bad_env_says_what_it_must_be(monkeypatch, tmp_path):
    monkeypatch.setenv("WFL_EXPYRE_INFO", "{not json")
    with pytest.raises(ValueError, match="WFL_EXPYRE_INFO is not valid JSON"):
        RemoteInfo.from_autopara(None, "x.calculate")
    monkeypatch.setenv("WFL_EXPYRE_INFO", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="cannot be read"):
        RemoteInfo.from_autopara(None, "x.calculate")
    monkeypatch.setenv("WFL_EXPYRE_INFO", json.dumps({"calculate": "slurm"}))
    with pytest.raises(ValueError, match="mapping operation names"):
        RemoteInfo.from_autopara(None, "x.calculate")


def test_the_env_var_key_may_be_the_name_users_call(monkeypatch):
    monkeypatch.setenv("WFL_EXPYRE_INFO", json.dumps({"calculate": {"sys_name": "slurm", "job_name": "sp",
                                                                    "resources": {"max_time": "5m"}}}))
    found = RemoteInfo.from_autopara(None, "wfl_like.calculators.generic._calculate_op")
    assert found is not None and found.job_name == "sp"
    assert RemoteInfo.from_autopara(None, "wfl_like.generate.optimize._optimize_op") is None
