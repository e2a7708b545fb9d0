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
    router's hull (dashed), the task oracle's (dotted, when the prompts come from several tasks),
    each single model (labelled dot) and the oracle (star) from the
    results of `training.evaluation.evaluate.summarize`; write a PNG to `path` and return it. Every legend
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
    hulls = [("zero router", results["zero_router"], "--", "grey")]
    if results.get("task_oracle"):  # several tasks: the best each task's own model mix can do, with hindsight
        hulls.append(("task oracle", results["task_oracle"], ":", "black"))
    for name, entry, linestyle, color in hulls:  # each hull extended flat to the shared cost range, as AIQ reads it
        hull = entry["hull"]
        ax.plot(list(hull["cost"]) + [results["aiq_max_cost"]], list(hull["quality"]) + [hull["quality"][-1]],
                linestyle=linestyle, color=color, label=legend_label(name, entry))
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


def plot_reliability(results: dict, path, bins_min_count: int = 1) -> Path:
    """
    Reliability diagram of every router in `results` (from `carrot evaluate`): mean true score
    against mean predicted quality per bin (dot size ~ cells in the bin), the diagonal of perfect
    calibration, and each router's ECE in the legend; a PNG at `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"The reliability diagram is written as PNG: give a file name ending in .png, not {path.name!r}.")
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    drawn = 0
    for name, entry in results.get("routers", {}).items():
        for label, calibration in ((name, (entry.get("prediction_quality") or {}).get("calibration")),
                                   (f"{name} (shifted)", (entry.get("shift") or {}).get("calibration"))):
            if not calibration:
                continue
            bins = [b for b in calibration["bins"] if b["count"] >= bins_min_count]
            x = np.array([b["mean_prediction"] for b in bins])
            y = np.array([b["mean_score"] for b in bins])
            sizes = 10 + 150 * np.sqrt(np.array([b["count"] for b in bins]) / max(calibration["n"], 1))
            line = ax.plot(x, y, marker="o", markersize=3, label=f"{label} (ECE {calibration['ece']:.3f})")[0]
            ax.scatter(x, y, s=sizes, color=line.get_color(), alpha=0.5)
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("The results hold no router with calibration figures to draw.")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted quality (bin)")
    ax.set_ylabel("mean true score (bin)")
    ax.set_title("Reliability of predicted quality")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["legend_label", "plot_curves", "plot_reliability"]
