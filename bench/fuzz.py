#!/usr/bin/env python3
"""The fuzz targets of tests/test_fuzz.py, for much longer than CI runs them.

CI runs each target for a couple of hundred examples; this runs each for --examples (default
100000), or until its share of --time is spent, in rounds of fresh random examples, and
prints one line per target: examples run, time, rate, and the first failure if any, followed
by the falsifying example (shrunk). Exits 1 if any target failed.

    bench/fuzz [--examples 100000] [--time SECONDS] [--target NAME ...] [--seed N]
    bench/fuzz --list
"""

from __future__ import annotations

import argparse
import math
import pathlib
import random
import sys
import time
import traceback
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import Phase, given, seed  # noqa: E402

from tests.test_fuzz import TARGETS, fuzz_settings  # noqa: E402

FIRST_ROUND = 200
MAX_ROUND = 5000


@dataclass
class Outcome:
    name: str
    examples: int = 0
    seconds: float = 0.0
    rounds: int = 0
    failure: str | None = None
    details: str = ""

    @property
    def rate(self) -> float:
        return self.examples / self.seconds if self.seconds else math.nan


def run_target(name: str, examples: int, budget: float, rng: random.Random) -> Outcome:
    """Rounds of up to MAX_ROUND examples, each with a fresh seed, until `examples` are run
    or `budget` seconds are spent; stops at the first failure."""
    check, strategy = TARGETS[name]
    outcome = Outcome(name)
    counted = 0

    def counting(value: object) -> None:
        nonlocal counted
        counted += 1
        check(value)

    counting.__name__ = name  # hypothesis names the falsifying example after it

    started = time.monotonic()
    size = FIRST_ROUND
    while outcome.examples < examples:
        elapsed = time.monotonic() - started
        if elapsed >= budget:
            break
        size = min(size, examples - outcome.examples)
        test = fuzz_settings(
            size,
            database=None,
            phases=(Phase.generate, Phase.shrink),
        )(seed(rng.getrandbits(64))(given(strategy)(counting)))
        counted = 0
        round_started = time.monotonic()
        try:
            test()
        except Exception as exc:  # noqa: BLE001 - a failing target is the result, not a crash
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            outcome.failure = text.splitlines()[0][:300]
            # Hypothesis attaches the falsifying example as a note: keep all of it.
            outcome.details = text
            outcome.examples += counted
            outcome.rounds += 1
            break
        finally:
            outcome.seconds = time.monotonic() - started
        outcome.examples += counted
        outcome.rounds += 1
        if counted < size:
            break  # hypothesis ran out of distinct examples: more rounds find nothing new
        round_time = time.monotonic() - round_started
        # Grow rounds while they are short, so that per-round overhead stays small.
        if round_time < max(1.0, budget / 50):
            size = min(size * 2, MAX_ROUND)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/fuzz", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=100_000,
        help="examples per target (default 100000)",
    )
    parser.add_argument(
        "--time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time budget for all targets together, shared equally (default: none)",
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=sorted(TARGETS),
        metavar="NAME",
        help="run only this target (repeatable); --list shows them",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the round seeds")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(sorted(TARGETS)))
        return 0
    if args.examples < 1:
        parser.error("--examples must be at least 1")

    names = args.target or sorted(TARGETS)
    master_seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(master_seed)
    print(
        f"fuzzing {len(names)} target(s), up to {args.examples} examples each"
        + (f", {args.time:g} s in all" if args.time is not None else "")
        + f" (seed {master_seed})",
        flush=True,
    )
    deadline = None if args.time is None else time.monotonic() + args.time
    outcomes = []
    for index, name in enumerate(names):
        budget = math.inf
        if deadline is not None:
            budget = max(0.0, (deadline - time.monotonic()) / (len(names) - index))
        outcome = run_target(name, args.examples, budget, rng)
        outcomes.append(outcome)
        verdict = "ok" if outcome.failure is None else f"FAILED: {outcome.failure}"
        print(
            f"  {name:<18} {outcome.examples:>8} examples {outcome.seconds:>8.1f} s "
            f"{outcome.rate:>8.0f}/s  {verdict}",
            flush=True,
        )
        if outcome.failure is not None:
            print("    " + outcome.details.replace("\n", "\n    "), flush=True)

    failed = [o for o in outcomes if o.failure is not None]
    total = sum(o.examples for o in outcomes)
    seconds = sum(o.seconds for o in outcomes)
    print(
        f"{total} examples in {seconds:.1f} s; "
        + (
            f"{len(failed)} target(s) FAILED: {', '.join(o.name for o in failed)}"
            if failed
            else "no failures"
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
