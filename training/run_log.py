"""What a run writes while it trains: metrics.csv, evaluations.csv, validation.csv, TensorBoard, curves.png."""

from __future__ import annotations

import csv
from pathlib import Path

from training.config import ActingVariant

TRAIN_CSV, EVAL_CSV, PLOT_FILE = "metrics.csv", "evaluations.csv", "curves.png"
VALIDATION_CSV = "validation.csv"  # losses on held-out episodes (sources other than OGBench files)
# The other evaluations of each step (TrainConfig.also_eval_variants): evaluations.csv's columns,
# and how each acted: variant (ActingVariant.spec), renoise_time (0: one step), critic_aggregate,
# noise_scale (absent from files written before it existed).
EVAL_ALSO_CSV = "evaluations_also.csv"


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows past `last_step` (left by an interrupted run) before a resumed run appends."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    fields = list(rows[0].keys())
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row for row in rows if int(row["step"]) <= last_step)


class RunLog:
    """Append-only CSV + TensorBoard logging for one run directory."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            for name in (TRAIN_CSV, EVAL_CSV, EVAL_ALSO_CSV, VALIDATION_CSV):
                _truncate_csv(self.run_dir / name, resume_step)
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def _append(self, name: str, row: dict) -> None:
        path = self.run_dir / name
        exists = path.exists() and path.stat().st_size > 0
        fields = list(row.keys())
        if exists:
            with open(path, newline="") as handle:
                header = next(csv.reader(handle), [])
            if set(row) - set(header):  # a resumed run that logs more columns: widen the file
                with open(path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
                fields = [*header, *(key for key in row if key not in header)]
                with open(path, "w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=fields, restval="")
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                fields = header
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            if not exists:
                writer.writeheader()
            writer.writerow(row)

    def train(self, step: int, info: dict[str, float]) -> None:
        self._append(TRAIN_CSV, {"step": step, **info})
        for key, value in info.items():
            self.writer.add_scalar(key, value, step)

    def evaluation(self, step: int, result: dict, also: tuple | None = None) -> None:
        """One evaluation: evaluations.csv and `eval/`, or with `also` = (ActingVariant, its
        re-noise time (0: one step), its critic aggregate, its noise scale), one of the run's other
        ways of acting:
        evaluations_also.csv and `eval_also/<spec>/`."""
        row = {
            "step": step,
            "success_rate": result["success_rate"],
            "success_rate_stderr": result["success_rate_stderr"],
            "mean_return": result["mean_return"],
            "mean_episode_length": result["mean_episode_length"],
            "episodes": result["episodes"],
            "num_candidates": result["num_candidates"],
            **result.get("puzzle_progress", {}),  # puzzle envs: presses made and presses left
        }
        tag = "eval"
        if also is not None:
            variant, acting = also
            row.update(
                variant=variant.spec,
                renoise_time=acting.renoise_time or 0.0,
                critic_aggregate=acting.critic_aggregate,
                noise_scale=acting.noise_scale,
            )
            tag = f"eval_also/{variant.spec}"
        self._append(EVAL_CSV if also is None else EVAL_ALSO_CSV, row)
        for key in ("success_rate", "mean_return", "mean_episode_length", *result.get("puzzle_progress", {})):
            if row[key] is not None:  # an env without a success signal has no success rate
                self.writer.add_scalar(f"{tag}/{key}", row[key], step)

    def validation(self, step: int, info: dict[str, float]) -> None:
        """Losses of the current networks on held-out episodes (no update)."""
        self._append(VALIDATION_CSV, {"step": step, **info})
        for key, value in info.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
        plot_curves(self.run_dir)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _columns(rows: list[dict], skip: tuple[str, ...] = ()) -> dict[str, list[float]]:
    # An empty cell (e.g. no success rate where the env reports none) reads as NaN.
    return {
        key: [float(row[key]) if row[key] not in ("", None) else float("nan") for row in rows]
        for key in (rows[0].keys() if rows else [])
        if key not in skip
    }


def _read_columns(path: Path) -> dict[str, list[float]]:
    return _columns(_read_rows(path))


def also_variant_of(row: dict) -> str:
    """The ActingVariant.spec an evaluations_also.csv row acted as: its `variant`, or in a file
    written before several were possible, its re-noise time's."""
    return row.get("variant") or ActingVariant(float(row["renoise_time"])).spec


def read_also_evaluations(run_dir: Path) -> dict[str, list[dict]]:
    """evaluations_also.csv's rows by the variant (spec) each acted as, in the order first logged."""
    by_variant: dict[str, list[dict]] = {}
    for row in _read_rows(Path(run_dir) / EVAL_ALSO_CSV):
        by_variant.setdefault(also_variant_of(row), []).append(row)
    return by_variant


def plot_curves(run_dir: Path) -> Path:
    """curves.png: losses, Q, alpha and success rate against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = _read_columns(Path(run_dir) / TRAIN_CSV)
    evals = _read_columns(Path(run_dir) / EVAL_CSV)
    also = {
        spec: _columns(rows, skip=("variant", "critic_aggregate"))
        for spec, rows in read_also_evaluations(run_dir).items()
    }
    held_out = _read_columns(Path(run_dir) / VALIDATION_CSV)
    # FQL runs log a flow-matching BC loss where MFQL logs the MeanFlow-identity loss.
    bc_panel = ("bc_flow/loss", "flow-matching BC loss", True) if "bc_flow/loss" in train else None
    panels = [
        ("critic/loss", "critic loss", True),
        bc_panel or ("mfi/loss", "MeanFlow-identity loss", True),
        ("actor/q", "Q of policy action", False),
        ("alpha", "alpha", False),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.6))
    for ax, (key, title, log) in zip(axes, panels, strict=False):
        if key in train:
            ax.plot(train["step"], train[key], linewidth=0.8, label="train")
            if f"val/{key}" in held_out:
                ax.plot(held_out["step"], held_out[f"val/{key}"], "o--", linewidth=1.2, label="held-out")
                ax.legend(fontsize=7)
            if log and min(train[key]) > 0:
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
    _outcome_panel(axes[-1], evals, also)
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _outcome_panel(
    ax, evals: dict[str, list[float]], also: dict[str, dict[str, list[float]]] | None = None
) -> None:
    """Success rate where the env reports it, else the mean return, else nothing (offline only);
    the other ways of acting (evaluations_also.csv, by variant spec) beside the first, dashed."""
    import math

    curves = [(evals, "o-", "as the run acts")]
    for index, (spec, columns) in enumerate((also or {}).items()):
        curves.append((columns, "sD^v<>"[index % 6] + "--", ActingVariant.parse(spec).label))
    if evals.get("success_rate") and not all(math.isnan(v) for v in evals["success_rate"]):
        for columns, style, label in curves:
            ax.errorbar(
                columns["step"],
                columns["success_rate"],
                yerr=columns["success_rate_stderr"],
                fmt=style,
                label=label,
            )
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("success rate")
    elif evals.get("mean_return"):
        for columns, style, label in curves:
            ax.plot(columns["step"], columns["mean_return"], style, label=label)
        ax.set_title("mean return")
    else:
        ax.set_title("no env: see the held-out losses")
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
