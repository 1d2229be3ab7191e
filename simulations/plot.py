"""``--plot``: how many nodes hold the latest state over virtual time (matplotlib)."""

from __future__ import annotations

from simulations.runner import Report


def plot(report: Report, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the optional extra
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    xs = [t for t, _ in report.latest_over_time]
    ys = [n for _, n in report.latest_over_time]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(xs, ys, where="post")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("nodes holding the final state")
    push = "eager push on" if report.eager_push else "eager push off"
    ax.set_title(
        f"{report.scenario}, {report.nodes} nodes, seed {report.seed}, {push}:"
        f" converged in {report.periods:.2f} periods"
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
