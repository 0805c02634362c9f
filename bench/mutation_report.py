"""The per-module mutation score table of ``make mutation``.

mutmut keeps the outcome of every mutant of ``src/ipspool/NAME.py`` in
``mutants/src/ipspool/NAME.py.meta`` (JSON: ``exit_code_by_key``, mutant name
-> the exit code of the tests run against it). This reads those files and
prints, per module, how many mutants the unit tests killed out of how many
were made. A mutant no unit test reaches ("no tests") counts as a survivor:
the score measures the suite, not the code it happens to cover.

``python -m bench.mutation_report build/mutation/mutants [--survivors]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Score", "main", "outcome", "read_scores", "render"]

# mutmut's exit codes (mutmut/stats.py, status_by_exit_code), folded into
# what the score needs: the tests failed (killed), passed (survived), never
# ran against it (no_tests), or it made them run away (timeout: SIGXCPU, or
# SIGKILL after it). A timeout counts as killed: the suite noticed.
_OUTCOMES = {
    1: "killed", 3: "killed",
    0: "survived",
    5: "no_tests", 33: "no_tests",
    36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -9: "timeout",
    None: "not_checked",
}


def outcome(exit_code: int | None) -> str:
    """killed, survived, no_tests, timeout, not_checked, or other (suspicious, segfault, skipped)."""
    return _OUTCOMES.get(exit_code, "other")


@dataclass(frozen=True)
class Score:
    module: str
    counts: Counter[str]
    survivors: tuple[str, ...]  # survived or reached by no test, by mutant name

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def killed(self) -> int:
        return self.counts["killed"] + self.counts["timeout"]

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0


def read_scores(mutants: Path) -> list[Score]:
    """One Score per mutated module, in module-name order."""
    scores = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(outcome(code) for code in codes.values())
        survivors = tuple(sorted(name for name, code in codes.items() if outcome(code) in ("survived", "no_tests")))
        scores.append(Score(meta.name.removesuffix(".py.meta"), counts, survivors))
    return sorted(scores, key=lambda s: s.module)


def render(scores: Iterable[Score], goal: float = 90.0) -> list[str]:
    """The table: module, killed / total, %, and what the rest were."""
    rows = [f"{'module':<12} {'killed':>7} / {'total':<6} {'%':>6}  {'survived':>8} {'no tests':>8} "
            f"{'timeout':>7} {'other':>5}"]
    all_killed = all_total = 0
    for s in scores:
        mark = "" if s.percent >= goal else f"  < {goal:.0f}%"
        rows.append(f"{s.module:<12} {s.killed:>7} / {s.total:<6} {s.percent:>6.1f}  {s.counts['survived']:>8} "
                    f"{s.counts['no_tests']:>8} {s.counts['timeout']:>7} "
                    f"{s.counts['other'] + s.counts['not_checked']:>5}{mark}")
        all_killed += s.killed
        all_total += s.total
    percent = 100.0 * all_killed / all_total if all_total else 100.0
    rows.append(f"{'all':<12} {all_killed:>7} / {all_total:<6} {percent:>6.1f}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mutants", type=Path, help="mutmut's mutants/ directory")
    parser.add_argument("--survivors", action="store_true", help="also list every surviving mutant")
    parser.add_argument("--goal", type=float, default=90.0, help="mark modules under this score (%%)")
    args = parser.parse_args(argv)
    scores = read_scores(args.mutants)
    if not scores:
        print(f"no mutmut results under {args.mutants}: run `make mutation` first", file=sys.stderr)
        return 1
    print("\n".join(render(scores, args.goal)))
    if args.survivors:
        for s in scores:
            for name in s.survivors:
                print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
