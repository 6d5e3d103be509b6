"""A sweep's curves: `study.png` (success and mean return per evaluation during training, one
line per arm and seed: on a dense reward such as puzzle's the return moves long before any
episode succeeds) and `study-losses.png` (critic loss, BC loss and Q from each run's metrics.csv).

Evaluations come from Tune's results for the runs a sweep trained, and from the run folder's
`evaluations.csv` for runs it only collects (earlier rounds, the hand-made runner's folders).
"""

from __future__ import annotations

import csv
from pathlib import Path

from training.run_log import EVAL_CSV, TRAIN_CSV, also_variant_of
from training.sweep.tables import Curve


def curve_of_run(run_dir: Path, file: str = EVAL_CSV, variant: str | None = None) -> Curve:
    """A run folder's evaluations during training (none with `--eval-every 0`); `file`
    evaluations_also.csv and `variant` (an ActingVariant.spec) for one of its other ways of
    acting. An older evaluations.csv lacks the mean return (and any but a puzzle env's the
    presses): its points lack them too."""
    path = Path(run_dir) / file
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if variant is not None:
        rows = [row for row in rows if also_variant_of(row) == variant]
    keys = ("success_rate", "success_rate_stderr", "mean_return", "presses_per_episode", "presses_left_end")
    return [
        {
            "step": int(row["step"]),
            **{k: float(row[k]) for k in keys if row.get(k)},
            **({"episodes": int(row["episodes"])} if row.get("episodes") else {}),
        }
        for row in rows
    ]


def episodes_label(curves: list[Curve]) -> str:
    """'success rate (N episodes each)' where every plotted evaluation ran N episodes (the
    curve's, `--curve-episodes`, not the final evaluation's); without the count otherwise."""
    counts = {point.get("episodes") for points in curves for point in points}
    return (
        f"success rate ({counts.pop()} episodes each)"
        if len(counts) == 1 and None not in counts
        else "success rate"
    )


def arm_colours(count: int) -> tuple:
    """Distinct colours for `count` arms: tab10 up to 10 (tab20 pairs a dark and a light shade
    of one hue, which made a two-arm study one colour), tab20 beyond."""
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab10" if count <= 10 else "tab20").colors


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(rows: list[dict], curves: dict, title: str, path: Path) -> Path:
    """Success rate (top) and mean return per episode (bottom) during training, one colour per
    arm (seeds share it, with their own markers), the legend beside the axes."""
    plt = _pyplot()
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = arm_colours(len(methods))
    markers = "osD^v<>"
    fig, (success_ax, return_ax) = plt.subplots(2, 1, figsize=(9.0, 6.6), sharex=True)
    for row in rows:
        points = curves.get((row["method"], row["seed"]), [])
        style = {
            "marker": markers[int(row["seed"]) % len(markers)],
            "color": colours[methods.index(row["method"]) % len(colours)],
            "label": f"{row['method']} seed {row['seed']}",
        }
        steps = [p["step"] for p in points]
        success_ax.errorbar(
            steps,
            [p["success_rate"] for p in points],
            yerr=[p.get("success_rate_stderr", 0.0) for p in points],
            capsize=3,
            **style,
        )
        if points and all("mean_return" in p for p in points):
            return_ax.plot(steps, [p["mean_return"] for p in points], **style)
    return_ax.set_xlabel("gradient step")
    success_ax.set_ylabel(episodes_label([curves.get((r["method"], r["seed"]), []) for r in rows]))
    return_ax.set_ylabel("mean return per episode")
    success_ax.set_ylim(-0.05, 1.05)
    success_ax.set_title(title, fontsize=9)
    success_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _running_mean(values: list[float]) -> list[float]:
    window = max(1, len(values) // 30)  # so runs can be told apart
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def plot_losses(rows: list[dict], path: Path) -> Path:
    """Critic loss, BC loss (MFQL: MFI; FQL: flow matching) and Q per arm and seed."""
    plt = _pyplot()
    panels = (
        ("critic/loss", "critic loss"),
        ("mfi/loss|bc_flow/loss", "BC loss"),
        ("actor/q", "Q of the policy's action"),
    )
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = arm_colours(len(methods))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for row in rows:
        with open(Path(row["run_dir"]) / TRAIN_CSV, newline="") as handle:
            lines = list(csv.DictReader(handle))
        steps = [int(line["step"]) for line in lines]
        for ax, (keys, title) in zip(axes, panels, strict=True):
            key = next((k for k in keys.split("|") if lines and k in lines[0]), None)
            if key is None:
                continue
            ax.plot(
                steps,
                _running_mean([float(line[key]) for line in lines]),
                color=colours[methods.index(row["method"]) % len(colours)],
                linestyle=("-", "--", ":")[int(row["seed"]) % 3],
                label=f"{row['method']} seed {row['seed']}",
            )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("gradient step")
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
