"""``python -m simulations SCENARIO --nodes N --seed S [--json] [--plot FILE.png]``."""

from __future__ import annotations

import argparse
import json
import sys

from simulations.runner import Report, run
from simulations.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="FILE.png", help="plot nodes holding the latest state")
    parser.add_argument("--files", type=int, help="size of the seeded folder")
    parser.add_argument("--degree", type=int, default=8, help="overlay degree (0: full mesh)")
    parser.add_argument("--no-eager-push", action="store_true", help="anti-entropy only")
    parser.add_argument(
        "--no-gc", action="store_true", help="no tombstone collection (members not given)"
    )
    parser.add_argument(
        "--wire",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode every message from its bytes (auto: up to 20 nodes)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    report = run(
        args.scenario,
        args.nodes,
        args.seed,
        eager_push=not args.no_eager_push,
        files=args.files,
        degree=args.degree,
        wire=None if args.wire == "auto" else args.wire == "on",
        gc=not args.no_gc,
    )
    if args.plot:
        from simulations.plot import plot

        plot(report, args.plot)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _summary(report)
    if report.invariant_violations:
        _replay(report, args.scenario)
        return 1
    return 0


def _summary(r: Report) -> None:
    state = "converged" if r.converged else "DID NOT CONVERGE"
    print(
        f"{r.scenario} nodes={r.nodes} seed={r.seed}: {state} in {r.virtual_seconds:.2f} virtual s"
        f" ({r.periods:.2f} periods), {r.messages} messages, {r.bytes} bytes"
        f" ({r.messages_per_node:.0f} msgs, {r.bytes_per_node:.0f} B per node),"
        f" {r.conflict_copies} conflict copies, peak in flight {r.peak_inflight_bytes} B,"
        f" wall {r.wall_seconds:.2f} s, trace {r.trace_hash[:16]}"
    )


def _replay(r: Report, scenario: str) -> None:
    err = sys.stderr
    print(f"INVARIANT VIOLATED in {scenario} seed={r.seed} nodes={r.nodes}:", file=err)
    for v in r.invariant_violations:
        print(f"  - {v}", file=err)
    print(
        f"replay: python -m simulations {scenario} --nodes {r.nodes} --seed {r.seed}"
        f"{'' if r.eager_push else ' --no-eager-push'}{'' if r.gc else ' --no-gc'}"
        f" --files {r.files}",
        file=err,
    )
    print("scenario steps (the trace to replay):", file=err)
    for line in r.replay:
        print(f"  {line}", file=err)


if __name__ == "__main__":
    sys.exit(main())
