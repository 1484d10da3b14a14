"""A real Dask cluster (distributed.LocalCluster, worker processes) runs the chunks with serial results."""

from pathlib import Path

import dask
import numpy as np
import pytest

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.calculators.generic import calculate
from backend_ops import rattle, refuse_5

distributed = pytest.importorskip("distributed")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "cu_rattled.xyz"


def run_all(tmp_path, tag, executor=None):
    info = {"executor": executor} if executor is not None else {"num_python_subprocesses": 0}
    from ase.calculators.emt import EMT

    calculate(ConfigSet(EXAMPLE), OutputSpec(tmp_path / f"{tag}_emt.xyz"), (EMT, [], {}),
              autopara_info={**info, "num_inputs_per_python_subprocess": 3})
    autoparallelize(rattle, ConfigSet(EXAMPLE), OutputSpec(tmp_path / f"{tag}_rng.xyz"), rng=np.random.default_rng(5),
                    autopara_info={**info, "num_inputs_per_python_subprocess": 2})
    return autoparallelize(refuse_5, ConfigSet(EXAMPLE), OutputSpec(tmp_path / f"{tag}_skip.xyz"),
                           autopara_info={**info, "errors": "skip"})


@pytest.mark.timeout(600)
def test_local_cluster_gives_the_serial_outputs(tmp_path):
    serial = run_all(tmp_path, "serial")
    # worker processes that start slowly on a loaded machine must not time out connecting
    # (30 s by default)
    with dask.config.set({"distributed.comm.timeouts.connect": "120s"}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = run_all(tmp_path, "dask", executor=client.get_executor())
        worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
    for kind in ("emt", "rng", "skip"):
        assert (tmp_path / f"dask_{kind}.xyz").read_bytes() == (tmp_path / f"serial_{kind}.xyz").read_bytes(), kind
    assert [f.index for f in on_dask.failures] == [f.index for f in serial.failures] == [5]
    assert len(worker_pids) == 2
