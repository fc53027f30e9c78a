"""Soak: SIGKILL djq's writers 20,000 times with the crash tests' harness and ledger.

Runs ``tests/test_crash.py``'s ``kill_again_and_again`` (forked direct writers in both
storages and both flock-based locks, compactions, and a broker serving a forked client)
for ``--kills`` kills in all, shared among its cases in the proportions the CI run uses,
in rounds of ``--round`` kills, each round on a fresh queue (so files stay small and a
round ends with a full drain). After every kill the files are checked against the
ledger: every put that was answered is in the file or was acked, no acked task is back,
no task is doubled, the files decode and check clean; at the end of a round every task
left is delivered exactly once.

Progress goes to stderr, one line per round; the summary (what the ledger found, per case
and in all) goes to stdout. The exit status is 1 if any round failed (each failure is
listed with the seed that reproduces it: ``CRASH_TEST_SEED=<seed> pytest
tests/test_crash.py`` runs the first round of that case with it).

    python3 benchmarks/soak.py --kills 20000      # about 20 min on 2 cores (55 ms per kill)
    python3 benchmarks/soak.py --kills 200        # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import test_crash  # noqa: E402  # the harness: tests/test_crash.py

COUNTS = ("kills", "put", "acked", "drained", "abandoned", "temp", "torn", "stale")


def _plan(total: int, names: list[str]) -> dict[str, int]:
    """Share ``total`` kills among the cases ``names`` in the CI run's proportions."""
    weights = {name: test_crash.CASES[name][1] for name in names}
    whole = sum(weights.values())
    plan = {name: total * w // whole for name, w in weights.items()}
    for name in sorted(names, key=lambda n: -weights[n])[: total - sum(plan.values())]:
        plan[name] += 1  # the remainder, to the biggest cases
    return {name: kills for name, kills in plan.items() if kills}


def _rounds(plan: dict[str, int], size: int) -> list[tuple[str, int]]:
    """Interleave the cases' rounds (so a short run still sees every case); each at most ``size`` kills."""
    left = dict(plan)
    rounds = []
    while any(left.values()):
        for name, kills in left.items():
            if kills:
                rounds.append((name, min(size, kills)))
                left[name] = kills - rounds[-1][1]
    return rounds


def _describe(name: str, seed: int, exc: Exception) -> str:
    """One line for a failed round: the case, its seed, the first line of the error and its notes."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    notes = "; ".join(getattr(exc, "__notes__", []))
    return f"{name}, seed {seed}: {type(exc).__name__}: {first} ({notes})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20_000, help="SIGKILLs in all (default 20,000)")
    parser.add_argument("--round", type=int, default=200, help="kills per round on one queue (default 200)")
    parser.add_argument("--seed", type=int, default=test_crash.SEED, help="base seed; round i uses seed+i")
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated case names (default: all): " + ", ".join(test_crash.CASES),
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the queues go (default: the temp dir)")
    parser.add_argument("--stop", action="store_true", help="stop at the first failed round")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n] or list(test_crash.CASES)
    unknown = [n for n in names if n not in test_crash.CASES]
    if unknown or args.kills < 1 or args.round < 1:
        parser.error(f"unknown cases {unknown}" if unknown else "--kills and --round must be at least 1")

    plan = _rounds(_plan(args.kills, names), args.round)
    per_case: dict[str, Counter[str]] = {name: Counter() for name in names}
    failures: list[str] = []
    done = 0
    started = time.monotonic()
    print(f"soak: {args.kills} kills in {len(plan)} rounds, seed {args.seed}", file=sys.stderr)
    for index, (name, kills) in enumerate(plan):
        case = test_crash.CASES[name][0]
        seed = args.seed + index
        round_started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="djq-soak-", dir=args.dir) as folder:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the harness's own lines
                    counts = test_crash.kill_again_and_again(Path(folder), case, kills, seed)
            except AssertionError as exc:
                notes = "; ".join(getattr(exc, "__notes__", []))
                failures.append(
                    f"{name}, seed {seed}: {str(exc).splitlines()[0] if str(exc) else exc!r} ({notes})"
                )
                counts = Counter(kills=kills, failed=1)
        per_case[name].update(counts)
        done += kills
        elapsed = time.monotonic() - started
        eta = elapsed / done * (args.kills - done)
        status = "FAILED" if counts.get("failed") else "ok"
        took = time.monotonic() - round_started
        print(
            f"[{done:>6}/{args.kills}] {name}: {kills} kills {status} in {took:.1f} s; "
            f"{1000 * elapsed / done:.0f} ms/kill, {len(failures)} failed rounds, "
            f"about {eta / 60:.1f} min left",
            file=sys.stderr,
            flush=True,
        )
        if failures and args.stop:
            break

    total: Counter[str] = Counter()
    for counts in per_case.values():
        total.update(counts)
    print(f"soak: {total['kills']} SIGKILLs in {(time.monotonic() - started) / 60:.1f} min, seed {args.seed}")
    header = f"{'case':<40} " + " ".join(f"{c:>9}" for c in COUNTS) + f" {'failed':>7}"
    print(header)
    for name, counts in per_case.items():
        if counts["kills"]:
            print(f"{name:<40} " + " ".join(f"{counts[c]:>9}" for c in COUNTS) + f" {counts['failed']:>7}")
    print(f"{'all':<40} " + " ".join(f"{total[c]:>9}" for c in COUNTS) + f" {total['failed']:>7}")
    print(
        "ledger: "
        + (
            f"every answered put present or acked, no acked task back, no task doubled, "
            f"every file clean after the next write, in all {total['kills']} kills"
            if not failures
            else f"{len(failures)} rounds failed:"
        )
    )
    for failure in failures:
        print(f"  {failure}")
    print(
        "columns: put/acked = answered puts/acks in the ledger; drained = tasks left at the ends of rounds, "
        "each delivered once; abandoned = of them, leases the killed writers never acked; temp/torn = kills "
        "that left a temp file or a torn journal line (removed by the next write); stale = kills that left a "
        "journal older than Queue.json (ignored, never applied twice)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
