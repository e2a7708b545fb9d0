"""Cost–quality curves of an evaluation as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carrot_hub.atomic_writing import atomic_path


def legend_label(name: str, entry: dict) -> str:
    """`name (AIQ a, quality q)`: the same two figures, labelled, for every entry (the oracle included)."""
    figures = [f"{label} {entry[key]:.3f}" for key, label in (("aiq", "AIQ"), ("quality_mu0", "quality"))
               if entry.get(key) is not None]
    return f"{name} ({', '.join(figures)})" if figures else name


def plot_curves(results: dict, path, title: str | None = None, log_cost: bool = True) -> Path:
    """
    Draw every router's and baseline's points (lines, in knob order sorted by cost), the zero
    router's hull (dashed), each single model (labelled dot) and the oracle (star) from the
    results of `training.evaluate.summarize`; write a PNG to `path` and return it. Every legend
    entry names what its figures are: AIQ (area under the curve) and quality (at μ = 0).

    The cost axis is logarithmic by default: the models' costs span two orders of magnitude.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"The plot is written as PNG: give a file name ending in .png, not {path.name!r}.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name such as {path / 'curves.png'}.")
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    styles = {"router": {"linewidth": 2.0}, "baseline": {"linewidth": 1.2, "alpha": 0.85}}
    for section in ("routers", "baselines"):
        for name, entry in results.get(section, {}).items():
            points = entry["points"]
            cost, quality = np.asarray(points["cost"]), np.asarray(points["quality"])
            order = np.argsort(cost, kind="stable")
            label = legend_label(name, entry)
            ax.plot(cost[order], quality[order], label=label, **styles.get(entry.get("kind", "baseline"), styles["baseline"]))
    zero = results["zero_router"]["hull"]
    ax.plot(
        list(zero["cost"]) + [results["aiq_max_cost"]],
        list(zero["quality"]) + [zero["quality"][-1]],
        linestyle="--",
        color="grey",
        label=legend_label("zero router", results["zero_router"]),
    )
    for model, entry in results["single_models"].items():
        ax.scatter([entry["cost"]], [entry["quality"]], s=18, color="black", zorder=3)
        ax.annotate(model.split("/")[-1], (entry["cost"], entry["quality"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    oracle = results["oracle"]
    ax.scatter([oracle["cost"]], [oracle["quality"]], marker="*", s=120, color="gold", edgecolor="black", zorder=4,
               label=legend_label("oracle", oracle))
    if log_cost:
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per prompt, US$" + (" (log scale)" if log_cost else ""))
    ax.set_ylabel("mean quality (true scores; missing = wrong)")
    data = results.get("data", {})
    ax.set_title(title or f"Cost–quality on {data.get('split', 'test')} ({data.get('n_prompts', '?')} prompts)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as staging:
        fig.savefig(staging, format="png")
    plt.close(fig)
    return path


__all__ = ["legend_label", "plot_curves"]
