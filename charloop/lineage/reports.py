"""Evaluation reports: the metrics-over-iterations plot and the tables artifacts show.

Pure functions of the metrics (no Prefect, no MLflow): the tasks turn their output into
artifacts, the registry logs the plot next to each iteration's contact sheet.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from charloop.core import atomic

SIMILARITIES = (
    "identity_consistency",
    "base_identity_consistency",
    "reference_similarity",
    "prompt_fidelity",
    "nearest_train_similarity",
    "diversity",
)
"""Cosine-scale metrics, drawn on one panel."""
LOSSES = ("validation_loss",)
"""Loss-scale metrics, drawn on a second panel when any iteration has one."""
PER_CONTEXT_COLUMNS = (
    "identity_to_other_contexts",
    "base_identity_to_other_contexts",
    "trigger_effect",
    "reference_similarity",
    "base_reference_similarity",
    "prompt_fidelity",
    "base_prompt_fidelity",
    "nearest_train_similarity",
    "diversity",
    "base_diversity",
)


def _series(history: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[float]]:
    """Each metric some iteration has, with NaN (a gap in the line) where one lacks it."""
    return {
        name: [float(row.get(name, math.nan)) for row in history]
        for name in names
        if any(name in row for row in history)
    }


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw the main metrics against the iteration number (1..N) into a PNG at ``path``.

    Args:
        history: Headline metrics of each iteration, oldest (iteration 1) first.
        path: Where to write the PNG (written atomically).

    Raises:
        ValueError: ``history`` is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("plot_history needs at least one iteration's metrics")
    iterations = list(range(1, len(history) + 1))
    panels = [(_series(history, SIMILARITIES), "cosine")]
    losses = _series(history, LOSSES)
    if losses:
        panels.append((losses, "loss"))
    figure = Figure(figsize=(9.0, 2.8 * len(panels) + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (series, ylabel) in zip(axes, panels, strict=True):
        for name, values in series.items():
            style = "--" if name.startswith("base_") else "-"
            ax.plot(iterations, values, style, marker="o", label=name)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title(f"metrics over iterations 1-{len(history)}")
    axes[-1].set_xlabel("iteration")
    axes[-1].set_xticks(iterations)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return atomic.write_bytes(path, buffer.getvalue())


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_markdown(
    iteration: int,
    summary: dict[str, float],
    deltas: dict[str, float] | None,
    contact_sheet: str | Path,
) -> str:
    """The evaluation's markdown: each metric, and its change since the previous iteration."""
    change = "change vs previous" if deltas is not None else "change (first iteration)"
    lines = [f"### Iteration {iteration}", "", f"| metric | value | {change} |", "|---|---|---|"]
    for name, value in summary.items():
        delta = (deltas or {}).get(name)
        lines.append(f"| {name} | {value:.4f} | {'-' if delta is None else f'{delta:+.4f}'} |")
    lines += ["", f"Contact sheet (rows: contexts, columns: seeds): `{contact_sheet}`"]
    return "\n".join(lines)


def per_context_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per held-out context from ``metrics.json``: LoRA and base-model scores.

    Columns no context has are left out, so every row has the same keys.
    """
    base = metrics.get("base_per_context", {})
    contexts = metrics.get("contexts", {})
    rows = []
    for cid, entry in metrics.get("per_context", {}).items():
        values = {**entry, **{f"base_{k}": v for k, v in base.get(cid, {}).items()}}
        context = contexts.get(cid, {})
        label = ", ".join(v for k, v in context.items() if isinstance(v, str) and v)
        rows.append({"context": label or cid, "id": cid, **values})
    columns = [c for c in PER_CONTEXT_COLUMNS if any(c in row for row in rows)]
    return [
        {
            "context": row["context"],
            "id": row["id"],
            **{c: None if row.get(c) is None else round(float(row[c]), 4) for c in columns},
        }
        for row in rows
    ]


def history_markdown(history: list[dict[str, Any]], plot: str | Path | None) -> str:
    """The main metrics of every iteration so far, one row each, and where the plot is."""
    names = [n for n in (*SIMILARITIES, "trigger_effect", *LOSSES) if any(n in r for r in history)]
    lines = [
        "| iteration | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for i, row in enumerate(history, start=1):
        lines.append(f"| {i} | " + " | ".join(_number(row.get(n)) for n in names) + " |")
    if plot is not None:
        lines += ["", f"Plot: `{plot}`"]
    return "\n".join(lines)


def dvc_plot_data(train_log: dict[str, Any], metrics: dict[str, Any]) -> dict[str, list[dict]]:
    """The datapoints ``dvc plots`` draws (``plots:`` in ``dvc.yaml``), one list per file.

    ``train_loss``: loss and learning rate per step; ``validation_loss``: held-out loss at
    each validation step; ``contexts``: per held-out context, identity with the LoRA and
    with the base model. ``dvc plots diff`` lays experiments over each other.
    """
    losses, rates = train_log.get("loss", []), train_log.get("learning_rate", [])
    train = [
        {"step": step, "loss": round(float(loss), 6), "learning_rate": float(rate)}
        for step, (loss, rate) in enumerate(zip(losses, rates, strict=False))
    ]
    validation = [
        {"step": int(point["step"]), "validation_loss": round(float(point["loss"]), 6)}
        for point in train_log.get("validation_loss", [])
    ]
    contexts = [
        {
            "context": row["context"],
            "lora_identity": row.get("identity_to_other_contexts"),
            "base_identity": row.get("base_identity_to_other_contexts"),
            "lora_reference_similarity": row.get("reference_similarity"),
        }
        for row in per_context_rows(metrics)
    ]
    return {"train_loss": train, "validation_loss": validation, "contexts": contexts}
