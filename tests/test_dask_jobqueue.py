"""Dask's route to Slurm: a ``dask_jobqueue.SLURMCluster`` whose workers are Slurm jobs of the
local cluster, its executor given to a call, gives the serial outputs byte for byte."""

from pathlib import Path

import pytest

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.generic import calculate
from wfl_like.errors import FailedItemsWarning
from backend_ops import refuse_5

distributed = pytest.importorskip("distributed")
dask_jobqueue = pytest.importorskip("dask_jobqueue")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "cu_rattled.xyz"
TESTS = Path(__file__).resolve().parent


def run_both(tmp_path, tag, info):
    from ase.calculators.emt import EMT

    calculate(ConfigSet(EXAMPLE), OutputSpec(tmp_path / f"{tag}_emt.xyz"), (EMT, [], {}),
              autopara_info={**info, "num_inputs_per_python_subprocess": 4})
    with pytest.warns(FailedItemsWarning, match="structure 5 is refused"):
        return autoparallelize(refuse_5, ConfigSet(EXAMPLE), OutputSpec(tmp_path / f"{tag}_skip.xyz"),
                               autopara_info={**info, "errors": "skip"})


def test_a_slurm_cluster_of_dask_jobqueue_gives_the_serial_outputs(tmp_path):
    import dask

    serial = run_both(tmp_path, "serial", {"num_python_subprocesses": 0})
    # two single-core worker jobs; the jobs import the tests' ops (backend_ops) from tests/
    with dask.config.set({"distributed.comm.timeouts.connect": "120s"}), dask_jobqueue.SLURMCluster(
            cores=1, processes=1, memory="1GB", walltime="00:10:00", job_name="wfl_like_dask",
            log_directory=str(tmp_path / "logs"), job_script_prologue=[f"export PYTHONPATH={TESTS}:$PYTHONPATH"],
            scheduler_options={"dashboard_address": None}) as cluster, distributed.Client(cluster) as client:
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=240)
        on_slurm = run_both(tmp_path, "slurm", {"executor": client.get_executor()})
        jobs = set(client.run(lambda: __import__("os").environ.get("SLURM_JOB_ID")).values())
    for kind in ("emt", "skip"):
        assert (tmp_path / f"slurm_{kind}.xyz").read_bytes() == (tmp_path / f"serial_{kind}.xyz").read_bytes(), kind
    assert [f.index for f in on_slurm.failures] == [f.index for f in serial.failures] == [5]
    assert len(jobs) == 2 and None not in jobs          # each worker ran inside a Slurm job of its own
