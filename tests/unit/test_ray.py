"""The Ray executor on a local Ray instance (CPU only, a custom resource standing in for GPUs).

Skipped when Ray is not installed (``pip install 'flashbench[ray]'``).
"""
import os

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'flashbench[ray]')")

from flashbench.model.case import Case, Task  # noqa: E402
from flashbench.execute.ray_executor import RayExecutor  # noqa: E402
from flashbench.results.files import load_run  # noqa: E402
from sweeps import FAST, invoke, plugin_path, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray with 2 'fake_gpu' resources; workers see the test plugin."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHBENCH_PLUGINS", "fake_backends")
        mp.setenv("PYTHONPATH", plugin_path())
        ray.init(num_cpus=2, resources={"fake_gpu": 2}, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()
            import sys

            mod = sys.modules.get("fake_backends")
            if mod is not None:
                mod.unregister()


def outcome(run):
    return sorted((r.task().key(), r.status) for r in run.records)


def test_ray_smoke_sweep_writes_the_same_records_as_local(tmp_path, local_ray):
    a, b = tmp_path / "ray", tmp_path / "local"
    r = invoke("run", "smoke", "-b", "naive,sdpa,sdpa_flash", "--executor", "ray", "--ray-num-gpus", "0",
               "--ray-resources", "fake_gpu=1", "--ray-group-size", "4", "--out", a, "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("run", "smoke", "-b", "naive,sdpa,sdpa_flash", "--devices", "0,1", "--out", b, "--quiet")
    assert r.exit_code == 0, r.output
    ray_run, local_run = load_run(a), load_run(b)
    assert len(ray_run.records) == 11 * 3 and len({r.task().key() for r in ray_run.records}) == 33
    assert outcome(ray_run) == outcome(local_run)
    assert ray_run.meta["finished"] is True and ray_run.meta["executor"] == "ray"
    assert all(r.device_name for r in ray_run.records if r.status == "ok")


def test_ray_task_failures_become_crashed_rows(local_ray):
    from flashbench.backends.plugins import load_plugins

    load_plugins("fake_backends")
    a, b = Case(1, 2, 2, 32, 32, 16, "float32", False, "fwd"), Case(1, 2, 2, 32, 32, 16, "float32", True, "fwd")
    # isolated (default): the kernel crash is contained in the task's worker subprocess
    ex = RayExecutor(FAST, "cpu", num_gpus=0, resources={"fake_gpu": 1}, timeout=60)
    recs = {(r.case.causal, r.backend): r for r in ex.run([Task(a, "naive"), Task(a, "fake_abort"), Task(b, "naive")])}
    assert recs[(False, "fake_abort")].status == "crashed" and "SIGABRT" in recs[(False, "fake_abort")].reason
    assert recs[(False, "naive")].status == recs[(True, "naive")].status == "ok"
    # not isolated: the Ray worker itself dies; after Ray's retries the task's rows are crashed
    ex = RayExecutor(FAST, "cpu", num_gpus=0, resources={"fake_gpu": 1}, isolate=False, max_retries=0)
    recs = {(r.case.causal, r.backend): r for r in ex.run([Task(a, "fake_exit"), Task(b, "naive")])}
    assert recs[(False, "fake_exit")].status == "crashed"
    assert "ray task failed" in recs[(False, "fake_exit")].reason
    assert recs[(True, "naive")].status == "ok"
