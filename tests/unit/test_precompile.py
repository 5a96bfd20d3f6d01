"""flashbench.execute.precompile: one case per compile key runs in parallel processes before a sweep;
failures and hangs there never fail the sweep (the worker compiles again and reports)."""
import time

from flashbench.model.case import Case, Task
from flashbench.execute.precompile import compile_groups, warm_caches
from flashbench.results.files import load_run

from sweeps import invoke, tiny_config


def case(n=32, d=16, causal=False, batch=1):
    return Case(batch, 2, 2, n, n, d, "float32", causal, "fwd")


def test_one_task_per_compile_key_the_smallest_case(fake_plugins):
    import fake_backends  # noqa: F401 - registers the fakes here

    tasks = [Task(case(64), "fake_compiling"), Task(case(32), "fake_compiling"), Task(case(32, causal=True), "fake_compiling"),
             Task(case(32, d=32), "fake_compiling"), Task(case(32), "fake_ok")]  # fake_ok: no key
    groups = compile_groups(tasks)
    assert sorted(t.case.label() for t in groups) == sorted(
        [case(32).label(), case(32, causal=True).label(), case(32, d=32).label()])
    assert {t.backend for t in groups} == {"fake_compiling"}
    assert compile_groups([Task(case(), "naive"), Task(case(), "sdpa")]) == []


def test_groups_run_once_each_in_parallel_processes(fake_plugins, tmp_path, monkeypatch):
    import fake_backends  # noqa: F401

    log = tmp_path / "compile.log"
    monkeypatch.setenv("FAKE_COMPILE_LOG", str(log))
    tasks = [Task(case(32, d=d, causal=c), "fake_compiling") for d in (16, 32) for c in (False, True)]
    tasks += [Task(case(64, d=16), "fake_compiling")]  # same key as the first: not run again
    s = warm_caches(tasks, "cpu", jobs=2)
    assert (s.groups, s.ok, s.failed, s.timed_out) == (4, 4, [], False)
    assert s.processes == 2
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 and len({ln.split()[0] for ln in lines}) == 2  # two pids


def test_a_failing_group_is_reported_not_raised(fake_plugins):
    import fake_backends  # noqa: F401

    s = warm_caches([Task(case(24), "fake_compiling"), Task(case(32, d=32), "fake_compiling")], "cpu", jobs=2)
    assert s.ok == 1 and len(s.failed) == 1
    assert "ValueError: fake_compiling: this shape does not compile" in s.failed[0]


def test_a_hanging_group_is_killed_at_the_timeout(fake_plugins):
    import fake_backends  # noqa: F401

    t0 = time.perf_counter()
    s = warm_caches([Task(case(40), "fake_compiling"), Task(case(32, d=32), "fake_compiling")], "cpu", jobs=2,
                    timeout=8)
    assert s.timed_out and s.ok == 1 and "timed out" in s.failed[0]
    assert time.perf_counter() - t0 < 30


def test_run_precompiles_and_records_it(fake_plugins, tmp_path, monkeypatch):
    log = tmp_path / "compile.log"
    monkeypatch.setenv("FAKE_COMPILE_LOG", str(log))
    cfg = tiny_config(tmp_path, ["fake_compiling", "naive"])
    r = invoke("run", cfg, "--device", "cpu", "--out", tmp_path / "a", "--quiet")
    assert r.exit_code == 0, r.output
    pre = load_run(tmp_path / "a").meta["precompile"]
    assert pre["groups"] == 2 and pre["ok"] == 2  # causal and not
    pids = {ln.split()[0] for ln in log.read_text().splitlines()}
    assert len(pids) >= 2  # the precompile processes, then the measuring worker
    r = invoke("run", cfg, "--device", "cpu", "--out", tmp_path / "b", "--quiet", "--no-precompile")
    assert r.exit_code == 0 and "precompile" not in load_run(tmp_path / "b").meta
    assert all(rec.status == "ok" for rec in load_run(tmp_path / "b").records)
