"""``flashbench run --rounds N``: the sweep measured N times, interleaved, each round in fresh workers,
one row per task holding every round; resuming an interrupted multi-round sweep; merging rounds."""
import json

import pytest

from flashbench.execute.plan import plan
from flashbench.execute.session import run_sweep
from flashbench.model.case import Task
from flashbench.model.config import load_config
from flashbench.model.schema import CSV_COLUMNS, Record
from flashbench.results.files import ResultsWriter, load_run
from flashbench.results.rounds import merge_rounds, round_medians, rounds_to_go
from sweeps import case, invoke, tiny_config
from synthetic import record


def keys(run):
    return [r.task().key() for r in run.records]


# --- merging rounds ---------------------------------------------------------------------------------

def test_merge_keeps_every_round_and_takes_the_median_of_round_medians():
    c = case()
    a, b, d = record("x", c, 1.0, n=10, seed=1), record("x", c, 1.3, n=30, seed=2), record("x", c, 1.1, n=20, seed=3)
    m = merge_rounds(merge_rounds(a, b), d)
    assert m.rounds == 3 and m.round_samples == [10, 30, 20] and m.samples == 60
    assert m.samples_ms == a.samples_ms + b.samples_ms + d.samples_ms
    assert m.round_medians_ms == [a.median_ms, b.median_ms, d.median_ms] == round_medians(m)
    # the median of the three round medians, not of the 60 pooled samples (which round 2 would dominate)
    assert m.median_ms == d.median_ms
    assert m.p20_ms < m.median_ms < m.p80_ms and m.min_ms == min(m.samples_ms)
    assert m.tflops == pytest.approx(m.flops / (m.median_ms * 1e-3) / 1e12)
    assert round_medians(a) == [a.median_ms] and a.rounds == 1
    with pytest.raises(ValueError, match="different tasks"):
        merge_rounds(a, record("y", c))


def test_host_time_power_and_clock_are_the_mean_of_the_rounds_each_round_weighing_the_same():
    """Rounds merge one at a time, so the first side of the third merge already holds two rounds: a mean of the
    two sides would weigh the third round as much as the first two together."""
    c = case()
    rounds = [record("x", c, 1.0, seed=i) for i in range(3)]
    for r, (host, watts, mhz) in zip(rounds, ((0.01, 600.0, 1_500.0), (0.02, 630.0, 1_560.0), (0.06, 690.0, 1_980.0))):
        r.host_ms, r.avg_power_w, r.sm_clock_mhz = host, watts, mhz
    m = merge_rounds(merge_rounds(rounds[0], rounds[1]), rounds[2])
    assert m.host_ms == pytest.approx(0.03) and m.avg_power_w == pytest.approx(640.0)
    assert m.sm_clock_mhz == pytest.approx(1_680.0)
    assert m.energy_j == pytest.approx(640.0 * m.median_ms / 1e3)
    # a round without a reading (NVML could not read the clock then) counts at the mean of the rounds merged with it
    rounds[1].sm_clock_mhz = None
    assert merge_rounds(merge_rounds(rounds[0], rounds[1]), rounds[2]).sm_clock_mhz == pytest.approx(1_660.0)
    rounds[0].sm_clock_mhz = None
    assert merge_rounds(merge_rounds(rounds[0], rounds[1]), rounds[2]).sm_clock_mhz == pytest.approx(1_980.0)


def test_a_failed_round_settles_the_row_and_says_which_round():
    c = case()
    ok = merge_rounds(record("x", c, 1.0, seed=1), record("x", c, 1.0, seed=2))
    crashed = Record(backend="x", case=c, status="crashed", reason="worker killed by signal 11")
    m = merge_rounds(ok, crashed)
    assert m.status == "crashed" and m.rounds == 3 and m.median_ms is None
    assert m.reason == "in round 3 (rounds 1–2: ok): worker killed by signal 11"
    assert rounds_to_go(m, 5) == 0  # a crash is not measured again
    assert rounds_to_go(None, 3) == 3 and rounds_to_go(ok, 3) == 1
    skipped = Record(backend="x", case=c, status="skipped", rounds=0)
    assert rounds_to_go(skipped, 3) == 0
    mismatch = merge_rounds(record("x", c, 1.0, seed=1), Record(**{**record("x", c, 1.0, seed=2).__dict__,
                                                                     "status": "mismatch", "reason": "O off"}))
    assert mismatch.status == "mismatch" and mismatch.reason == "O off" and mismatch.rounds == 2


def test_rounds_are_in_the_csv_and_the_round_lists_only_in_json(tmp_path):
    assert "rounds" in CSV_COLUMNS and "round_medians_ms" not in CSV_COLUMNS and "round_samples" not in CSV_COLUMNS
    m = merge_rounds(record("x", case(), 1.0, seed=1), record("x", case(), 2.0, seed=2))
    ResultsWriter(tmp_path, {"config": {}}, [m])
    back = load_run(tmp_path).records[0]
    assert back.round_medians_ms == m.round_medians_ms and back.round_samples == m.round_samples and back.rounds == 2


# --- the sweep --------------------------------------------------------------------------------------

class RecordingExecutor:
    """Answers every task with a synthetic record and remembers what each run() call was given;
    ``fail`` maps (task key, call number) to a status for that round."""

    device_indices: list = []

    def __init__(self, fail=None):
        self.calls, self.checks, self.fail, self.identities = [], [], fail or {}, {}

    def run(self, tasks, check=True):
        n = len(self.calls) + 1
        self.calls.append([t.key() for t in tasks])
        self.checks.append(check)
        for t in tasks:
            status = self.fail.get((t.key(), n))
            yield (Record.for_task(t, status=status, reason="boom") if status
                   else record(t.backend, t.case, 1.0 + n / 10, n=8, seed=n))


def test_rounds_are_interleaved_and_each_task_ends_with_one_row(tmp_path, fake_plugins):
    p = plan(load_config(tiny_config(tmp_path, ["naive", "fake_ok"], seq_len=(32, 64))), device="cpu")
    tasks = [t.key() for t in p.runnable]
    crash = p.runnable[1].key()
    ex = RecordingExecutor(fail={(crash, 2): "crashed"})
    writer = ResultsWriter(tmp_path / "run", {"config": {}})
    rows = run_sweep(p, writer, ex, rounds=3)
    # round 1 of every task, then round 2, then round 3 (without the task that crashed in round 2), each round
    # with every case's two backends in the other order than the round before (the crashed task's case has one
    # backend left in round 3)
    assert [k[0] for k in tasks] == ["naive", "fake_ok"] * (len(tasks) // 2)  # case after case, backends in order

    def swapped(keys):
        return [k for i in range(0, len(keys), 2) for k in (keys[i + 1], keys[i])]

    assert ex.calls == [tasks, swapped(tasks), [k for k in tasks if k != crash]]
    assert ex.checks == [True, False, False]  # correctness in the first round only
    run = load_run(tmp_path / "run")
    assert keys(run) == tasks and len(rows) == len(tasks)
    by_key = {r.task().key(): r for r in run.records}
    assert by_key[crash].status == "crashed" and by_key[crash].reason.startswith("in round 2 (round 1: ok)")
    ok = [r for k, r in by_key.items() if k != crash]
    assert all(r.rounds == 3 and r.round_medians_ms == pytest.approx([1.1, 1.2, 1.3], rel=0.02) for r in ok)
    assert run.meta["finished"] is True


def test_each_round_runs_in_fresh_worker_processes(tmp_path, fake_plugins):
    cfg = tiny_config(tmp_path, ["fake_ok"], causal=(False,), seq_len=(32, 64))
    r = invoke("run", cfg, "--rounds", "2", "--out", tmp_path / "local", "--quiet")
    assert r.exit_code == 0, r.output
    run = load_run(tmp_path / "local")
    assert run.meta["rounds"] == 2 and [x.rounds for x in run.records] == [2, 2]
    # the timing as run, the defaults the YAML left out included (a default may change between versions); a CPU
    # run's timer takes no rest
    on_gpu = str(run.meta["environment"]["device"]).startswith("cuda")
    assert run.meta["timing"]["warmup_ms"] == 1 and run.meta["timing"]["max_noise_pct"] == 1.0
    assert run.meta["timing"]["rest_ms"] == (300.0 if on_gpu else 0.0)
    pids = [x.backend_config.split(" | ") for x in run.records]  # fake_ok reports the pid that measured it
    assert all(len(p) == 2 for p in pids)
    first, second = {p[0] for p in pids}, {p[1] for p in pids}
    assert not first & second  # no worker of round 1 measured in round 2
    # in process, the rounds share this process (documented)
    r = invoke("run", cfg, "--rounds", "2", "-e", "inprocess", "--out", tmp_path / "inproc", "--quiet")
    assert r.exit_code == 0, r.output
    assert {x.backend_config for x in load_run(tmp_path / "inproc").records} == {f"pid={__import__('os').getpid()}"}


def test_later_rounds_time_without_checking_and_the_row_keeps_the_first_rounds_check(tmp_path, monkeypatch):
    import flashbench.measure.measurer as measurer

    computed = []
    real = measurer.compute_reference
    monkeypatch.setattr(measurer, "compute_reference", lambda *a: computed.append(a[1]) or real(*a))
    cfg = tiny_config(tmp_path, ["naive"], seq_len=(32,), causal=(False, True))  # 2 cases
    r = invoke("run", cfg, "-e", "inprocess", "--rounds", "3", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    rows = load_run(tmp_path / "o").records
    assert len(computed) == 2  # one reference per case, in round 1; none in rounds 2 and 3
    assert all(x.rounds == 3 and x.status == "ok" and x.max_abs_err is not None and x.tolerance_abs for x in rows)
    # a mismatch found in round 1 stays on the row through the unchecked rounds
    bad = merge_rounds(Record(**{**rows[0].__dict__, "status": "mismatch", "reason": "O off", "rounds": 1,
                                 "round_medians_ms": [], "round_samples": []}),
                       Record(**{**rows[1].__dict__, "backend": rows[0].backend, "case": rows[0].case,
                                 "max_abs_err": None, "rel_err": None, "rounds": 1, "round_medians_ms": [],
                                 "round_samples": []}))
    assert bad.status == "mismatch" and bad.max_abs_err == rows[0].max_abs_err


def test_executors_pass_a_timing_only_run_to_their_measurers(tmp_path):
    from flashbench.execute.executors import InProcessExecutor
    from flashbench.execute.local import LocalExecutor
    from flashbench.measure.measurer import MeasureSettings, for_run

    on, off = MeasureSettings(), MeasureSettings(correctness=False)
    assert for_run(on, True) is on and for_run(on, False).correctness is False and on.correctness is True
    assert for_run(off, True) is off  # a sweep run with correctness off stays off in every round
    local = LocalExecutor(on, "cpu", log_dir=tmp_path)
    list(local.run([], check=False))
    assert local._run_settings.correctness is False and local.settings is on
    list(local.run([]))
    assert local._run_settings is on
    inproc = InProcessExecutor(on, "cpu")
    list(inproc.run([], check=False))
    assert inproc.measurer.settings.correctness is False


def test_rounds_from_the_config_and_bad_rounds(tmp_path, fake_plugins):
    cfg = tiny_config(tmp_path, ["fake_ok"], causal=(False,))
    text = open(cfg).read() + "rounds: 2\n"
    with open(cfg, "w") as f:
        f.write(text)
    r = invoke("run", cfg, "--dry-run")
    assert r.exit_code == 0 and "1 to run in 2 rounds (2 measurements)" in r.output
    r = invoke("run", cfg, "-e", "inprocess", "--rounds", "3", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0 and load_run(tmp_path / "o").records[0].rounds == 3  # --rounds wins
    assert invoke("run", cfg, "--rounds", "0").exit_code == 2
    with open(cfg, "w") as f:
        f.write(text.replace("rounds: 2", "rounds: 0"))
    r = invoke("run", cfg, "--dry-run")
    assert r.exit_code == 2 and "rounds" in r.output


def test_resume_runs_only_the_rounds_each_task_lacks(tmp_path, fake_plugins):
    cfg = tiny_config(tmp_path, ["naive", "fake_ok"], seq_len=(32,), causal=(False, True))  # 4 tasks
    out = tmp_path / "run"
    assert invoke("run", cfg, "-e", "inprocess", "--rounds", "2", "--out", out, "--quiet").exit_code == 0
    full = json.loads((out / "results.json").read_text())
    # as if interrupted in round 2: task 1 holds round 1 only, tasks 2 and 3 have no row yet
    doc = json.loads((out / "results.json").read_text())
    cut = doc["records"][1]
    n0 = cut["round_samples"][0]
    first_round = cut["samples_ms"][:n0]
    cut.update(samples_ms=first_round, round_samples=[], round_medians_ms=[], rounds=1,
               median_ms=cut["round_medians_ms"][0], samples=n0)
    doc["records"] = doc["records"][:2]
    doc["finished"] = False
    (out / "results.json").write_text(json.dumps(doc))

    r = invoke("run", cfg, "--dry-run", "--resume", out)
    assert r.exit_code == 0 and "3 to run in 2 rounds (5 measurements)" in r.output  # 1 + 2 + 2
    assert invoke("run", cfg, "--resume", out, "--rounds", "1").exit_code == 2  # fewer rounds than it has
    r = invoke("run", cfg, "-e", "inprocess", "--resume", out, "--quiet")
    assert r.exit_code == 0, r.output
    done = load_run(out)
    assert sorted(keys(done)) == sorted(Record.from_dict(x).task().key() for x in full["records"])
    assert len(set(keys(done))) == 4 and all(x.rounds == 2 for x in done.records)
    assert done.records[0].to_dict() == Record.from_dict(full["records"][0]).to_dict()  # untouched
    resumed = done.records[1]
    assert resumed.samples_ms[:n0] == first_round and resumed.round_samples[0] == n0
    assert done.meta["finished"] is True and done.meta["rounds"] == 2

    # more rounds on a finished directory: every task gets its third round, still one row each
    r = invoke("run", cfg, "-e", "inprocess", "--resume", out, "--rounds", "3", "--quiet")
    assert r.exit_code == 0, r.output
    more = load_run(out)
    assert keys(more) == keys(done) and all(x.rounds == 3 for x in more.records) and more.meta["rounds"] == 3
    assert all(m.samples_ms[:len(d.samples_ms)] == d.samples_ms for m, d in zip(more.records, done.records))


def test_skipped_rows_hold_no_round(tmp_path):
    p = plan(load_config("smoke"), ["sdpa_flash"], "cpu")
    assert p.skipped and all(r.rounds == 0 and rounds_to_go(r, 3) == 0 for r in p.skipped)
    assert Task(p.skipped[0].case, "sdpa_flash").key() == p.skipped[0].task().key()


class _ClockFellMonitor:
    """A GPU monitor that saw the SM clock fall while busy (and nothing else)."""

    def __init__(self, index):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def summary(self):
        return {}

    def warnings(self, expected_processes):
        return []

    def clock_fell(self):
        return True


@pytest.mark.parametrize("rounds, warned", [(1, True), (2, False)])
def test_a_sweep_whose_clock_fell_warns_while_rounds_leave_places_untried(tmp_path, fake_plugins, monkeypatch,
                                                                         rounds, warned):
    from dataclasses import replace

    from flashbench.execute import session

    for name, fake in (("GpuMonitor", _ClockFellMonitor), ("gpu_state", lambda i: {}), ("nvml_index_of", lambda i: i),
                       ("compute_processes", lambda i: 1)):
        monkeypatch.setattr(session, name, fake)
    p = replace(plan(load_config(tiny_config(tmp_path, ["naive", "fake_ok"], seq_len=(32,))), device="cpu"),
                device="cuda")
    ex = RecordingExecutor()
    ex.device_indices = [0]
    run_sweep(p, ResultsWriter(tmp_path / "run", {"config": {}}), ex, rounds=rounds)
    notes = [w for w in load_run(tmp_path / "run").meta["warnings"] if "carry its place in the case" in w]
    assert notes == ([f"the SM clock moved during the sweep, and each case's backends were timed one after another in "
                      f"1 round: a backend's figures carry its place in the case (the clocks the one before left); "
                      f"--rounds 2 times each backend once in every place (README: Known limits)"] if warned else [])
