"""Many seeds of one scenario: ``python -m simulations.batch SCENARIO --nodes N --seeds K``.

Prints one JSON summary (converged count, runs with violations and their
first violation, period statistics); exit code 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from simulations.runner import run
from simulations.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.batch")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--no-gc", action="store_true")
    parser.add_argument("--no-eager-push", action="store_true")
    args = parser.parse_args(argv)
    failed: dict[int, str] = {}
    converged = 0
    periods: list[float] = []
    wall = 0.0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run(
            args.scenario,
            args.nodes,
            seed,
            gc=not args.no_gc,
            eager_push=not args.no_eager_push,
        )
        converged += r.converged
        wall += r.wall_seconds
        if r.converged:
            periods.append(r.periods)
        if r.invariant_violations:
            failed[seed] = r.invariant_violations[0]
        print(
            f"seed {seed}: converged={r.converged} periods={r.periods} "
            f"violations={len(r.invariant_violations)} wall={r.wall_seconds}",
            file=sys.stderr,
        )
    summary = {
        "scenario": args.scenario,
        "nodes": args.nodes,
        "seeds": args.seeds,
        "gc": not args.no_gc,
        "converged": converged,
        "runs_with_violations": len(failed),
        "failed": failed,
        "periods_median": statistics.median(periods) if periods else None,
        "periods_max": max(periods, default=None),
        "wall_seconds": round(wall, 1),
    }
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
