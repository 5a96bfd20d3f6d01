"""How often `flashbench check` fails an unchanged sweep: the gate's A/A false-alarm rate on your runs.

Give runs of one config on one GPU model with unchanged code (one `flashbench run --rounds N`, or
several runs, merged as `flashbench baseline save` merges them): every task holds R rounds. Each way
to pick a baseline of --baseline-rounds of them and a current run of --current-rounds others is an
A/A pair (up to --max-pairs, spread over all of them); each pair is gated with the thresholds, and the
tool prints the share of pairs that failed (the false-alarm rate per sweep, to hold against
`noise.family_alpha`), the share of cases, and the cases that failed most often.

    python tools/gate_false_alarms.py RUN [RUN ...] [-t THRESHOLDS] [--baseline-rounds 3] [--current-rounds 1]
                                      [--max-pairs 50] [--json FILE]

Exit status 0; 2 on bad input (runs that cannot be rounds of one baseline, fewer rounds than the
picks need, a bad thresholds file or option).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter

from flashbench.analysis.compare import NotComparableError
from flashbench.analysis.gate import check_runs
from flashbench.analysis.thresholds import load_thresholds
from flashbench.model.yaml_input import ConfigError
from flashbench.report.format import compact_shape
from flashbench.results.files import ResultsError, load_run
from flashbench.results.rounds import has_timings, merge_runs, regroup_rounds

TOP = 10  # cases listed by how often they failed


def pairs(rounds: int, n_base: int, n_cur: int, most: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Disjoint (baseline picks, current picks), at most ``most`` of them, evenly spread over all."""
    every = [(b, c) for b in itertools.combinations(range(rounds), n_base)
             for c in itertools.combinations([i for i in range(rounds) if i not in b], n_cur)]
    step = max(1, -(-len(every) // most))
    return every[::step][:most]


def false_alarms(run, thresholds, n_base: int, n_cur: int, most: int) -> dict:
    """Gate every A/A pair of ``run`` (a run whose tasks hold their rounds) and count what failed."""
    timed = [r.rounds for r in run.records if has_timings(r)]
    rounds = min(timed, default=0)
    if rounds < n_base + n_cur:
        raise ValueError(f"the runs hold {rounds} rounds of some timed task: a baseline of {n_base} and a current "
                         f"run of {n_cur} need {n_base + n_cur}")
    chosen = pairs(rounds, n_base, n_cur, most)
    failing_pairs, cases, compared = 0, Counter(), 0
    for base, cur in chosen:
        report = check_runs(regroup_rounds(run, list(base)), regroup_rounds(run, list(cur)), thresholds)
        compared += len(report.compared)
        failing_pairs += report.failed
        cases.update(f"{c.backend} {compact_shape(c.key)}" for c in report.failures)
        cases.update(f"{s.backend} (slower as a whole)" for s in report.failed_shifts)
    return {"rounds": rounds, "baseline_rounds": n_base, "current_rounds": n_cur, "pairs": len(chosen),
            "failing_pairs": failing_pairs, "pair_rate": failing_pairs / len(chosen),
            "cases_compared": compared, "failing_cases": sum(cases.values()),
            "case_rate": sum(cases.values()) / compared if compared else 0.0,
            "most_failing": cases.most_common(TOP)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="results directories (or results.json) of one config, unchanged code")
    ap.add_argument("-t", "--thresholds", help="thresholds YAML or bundled name (default: the bundled 'default')")
    ap.add_argument("--baseline-rounds", type=int, default=3)
    ap.add_argument("--current-rounds", type=int, default=1)
    ap.add_argument("--max-pairs", type=int, default=50)
    ap.add_argument("--json", help="write the figures as JSON here")
    a = ap.parse_args(argv)
    for name in ("baseline_rounds", "current_rounds", "max_pairs"):
        if getattr(a, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}", file=sys.stderr)
            return 2
    try:
        thresholds, _ = load_thresholds(a.thresholds)
        run = merge_runs([load_run(p) for p in a.runs], list(a.runs))
        result = false_alarms(run, thresholds, a.baseline_rounds, a.current_rounds, a.max_pairs)
    except ConfigError as e:
        print("\n".join(f"error: {p}" for p in e.problems), file=sys.stderr)
        return 2
    except (ResultsError, NotComparableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result['pairs']} A/A pairs ({a.baseline_rounds} baseline rounds against {a.current_rounds} of the "
          f"{result['rounds']} rounds): {result['failing_pairs']} failed the gate ({result['pair_rate']:.1%} of "
          f"sweeps; noise.family_alpha {thresholds.noise.family_alpha:g}); {result['failing_cases']} of "
          f"{result['cases_compared']} case comparisons ({result['case_rate']:.3%})")
    for case, n in result["most_failing"]:
        print(f"  {n:4d}  {case}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
