"""`--executor ray` on a cluster without what the tasks ask for: exit 3 with the fix, at once, and a Ray the
run started is shut down (issue 15, item 2). Ray runs in local mode on the CPU."""
import threading

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'flashbench[ray]')")

from flashbench.execute.ray_executor import RayExecutor, RayUnavailable  # noqa: E402
from flashbench.model.case import Case, Task  # noqa: E402
from sweeps import FAST, invoke  # noqa: E402

TASKS = [Task(Case(1, 2, 2, 32, 32, 16, "float32", False, "fwd"), "naive")]
LOCAL = {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "logging_level": "ERROR"}


def within(seconds, fn, *args):
    """fn(*args) in a daemon thread: its result or exception, or a failure when it is still waiting
    after ``seconds`` (the bug was an endless wait)."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still waiting after {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def no_ray_running():
    assert not ray.is_initialized()
    yield
    if ray.is_initialized():  # the test failed: do not leave a Ray behind for the next one
        ray.shutdown()
        pytest.fail("a Ray started by flashbench was left running")


def test_cuda_sweep_on_a_cluster_without_gpus_fails_fast_and_shuts_ray_down(no_ray_running):
    """Item 2: tasks asking for a GPU on a GPU-less cluster: RayUnavailable naming --ray-num-gpus 0,
    instead of waiting forever; the local Ray the executor started is shut down."""
    ex = RayExecutor(FAST, "cuda", num_gpus=1, init_kwargs=LOCAL)
    with pytest.raises(RayUnavailable) as e:
        within(120, lambda: list(ex.run(TASKS)))
    assert "each asks for 1 GPU" in str(e.value) and "--ray-num-gpus 0" in str(e.value)
    assert not ray.is_initialized()


def test_missing_custom_resource_is_named(no_ray_running):
    """Item 2: a custom resource no node has is refused the same way, naming the resource."""
    ex = RayExecutor(FAST, "cpu", num_gpus=0, resources={"tpu": 1}, init_kwargs=LOCAL)
    with pytest.raises(RayUnavailable) as e:
        list(ex.run(TASKS))
    assert "1 tpu" in str(e.value) and "--ray-resources" in str(e.value)
    assert not ray.is_initialized()


def test_cli_ray_without_gpus_is_exit_3_with_the_fix(tmp_path, no_ray_running):
    """Item 2: `flashbench run smoke --executor ray` on a CPU machine: exit 3 and the fix, not a hang."""
    r = within(120, invoke, "run", "smoke", "-b", "naive", "--executor", "ray", "--out", tmp_path / "r", "--quiet")
    assert r.exit_code == 3, r.output
    assert "--ray-num-gpus 0" in r.output
    assert not ray.is_initialized()
