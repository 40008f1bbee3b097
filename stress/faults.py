"""Run the seeded fault-injection cases of ``tests/test_faults.py`` in bulk.

    python stress/faults.py                  # seeds 0..2999
    python stress/faults.py --start 10000 --count 5000
    python stress/faults.py --seed 123 -v    # replay one case, with the log

Each case is deterministic (virtual clock, fixed-length signatures), so a
failing seed replays the same way.  Prints what was run and what came out,
and exits 1 if any case broke a property.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import test_faults as tf


def outcome(case: tf.Case) -> str:
    parts = []
    for side in "ab":
        lost = case.apps[side].lost
        exc = lost[0] if lost else "never"
        parts.append("clean" if exc is None else type(exc).__name__)
    return "/".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--debug", action="store_true", help="asyncio debug mode for every case")
    parser.add_argument("--time-limit", type=float, default=1500.0, help="stop after this (s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every layer event")
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.count)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
        logging.getLogger("asyncio").setLevel(logging.WARNING)

    planned: collections.Counter[str] = collections.Counter()
    fired: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[int] = []
    totals = collections.Counter[str]()
    t0 = time.perf_counter()
    run = 0
    for seed in seeds:
        if time.perf_counter() - t0 > args.time_limit:
            print(f"time limit reached after {run} cases")
            break
        plan, problems, case = tf.run_case(seed, debug=args.debug or seed % tf.DEBUG_EVERY == 0)
        run += 1
        kind = plan.fault.kind if plan.fault else "none"
        planned[kind] += 1
        if case.pipe.fired or case.fault_hit:
            fired[kind] += 1
        outcomes[outcome(case)] += 1
        totals["layers pushed"] += sum(
            1
            for name, f in case.futures
            if "start_tls" in name and f.done() and not f.cancelled() and f.exception() is None
        )
        totals["layers popped"] += sum(
            1
            for name, f in case.futures
            if "stop_tls" in name and f.done() and not f.cancelled() and f.exception() is None
        )
        totals["bytes sent by applications"] += len(case.sent["a"]) + len(case.sent["b"])
        totals["pipe deliveries"] += case.pipe.ticks
        if problems:
            failures.append(seed)
            print(tf.failure_text(plan, problems, case), end="\n\n")
        elif args.verbose:
            print(plan.describe())
            print(
                f"fired: {case.pipe.fired or case.fault_hit or 'nothing'}; outcome {outcome(case)}"
            )
    elapsed = time.perf_counter() - t0
    print(f"fault cases run: {run} in {elapsed:.1f} s ({run / elapsed:.1f} cases/s)")
    print("faults planned:  " + ", ".join(f"{k} {v}" for k, v in sorted(planned.items())))
    print("faults fired:    " + ", ".join(f"{k} {v}" for k, v in sorted(fired.items())))
    print("endings (a/b):   " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print("totals:          " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print(f"failures:        {len(failures)}" + (f" seeds {failures}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
