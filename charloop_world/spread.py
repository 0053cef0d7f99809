"""Loop-to-loop spread: the validity of several loops of the same settings, side by side.

One loop is one draw. Its generation and training seeds (``generate.seed``, ``train.seed``)
decide which images are kept and where training lands, and the loop's own stop rule and
candidate pick decide which round an artist is handed. The validity report's ``±`` is the
spread across its evaluation seeds for that one loop; this report puts several loops'
validity reports (``charloop report validity`` of each) together and says how far a claim
holds across them:

- per model row (the base models, each round, the round the loop names candidate, the
  round the oracle scores best): mean, standard deviation and minimum across loops;
- per target: in how many loops the loop's candidate meets it.

The candidate is what the loop hands over (its ``candidate`` alias): the best round by its
own metrics (:func:`~charloop.lineage.rounds.round_candidate`), not the oracle's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from charloop.core.errors import BadInput
from charloop_world.validity_summary import BASE, DESCRIBED

CANDIDATE, ORACLE_BEST = "loop's candidate", "best round (oracle)"
COLUMNS = {
    "consistency": "consistency %",
    "all_attributes": "all attributes %",
    "context_fidelity": "context fidelity %",
    "layout_variety": "layout variety",
    "expression_variety": "expression variety",
}
FIDELITY_MARGIN = 5.0
"""Points of context fidelity a round may lose against the base model."""
VARIETY_KEPT = 0.9
"""Share of the described base model's layout variety a round must keep."""


def read_reports(folders: list[Path]) -> list[dict[str, Any]]:
    """Each folder's ``validity.json``, checked to be one character with candidates.

    Raises:
        BadInput: fewer than two folders, a folder without a readable report, or reports
            of different characters.
    """
    if len(folders) < 2:
        raise BadInput("a spread needs the validity reports of at least two loops")
    reports = []
    for folder in folders:
        path = folder / "validity.json"
        if not path.is_file():
            raise BadInput(f"{path} is missing: run `charloop report validity --out {folder}`")
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path} is not JSON ({exc}): write it again") from None
        if not isinstance(report, dict) or not {"character", "models"} <= set(report):
            raise BadInput(f"{path} is not a validity report (no 'character' and 'models')")
        reports.append(report)
    first = reports[0]["character"]
    for folder, report in zip(folders, reports, strict=True):
        if report["character"] != first:
            raise BadInput(
                f"{folder}: another character ({report['character']}) than {folders[0]} "
                f"({first}); a spread compares loops of one character"
            )
    return reports


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A report's model rows plus the loop's candidate and the oracle's best round."""
    models = report["models"]
    rounds = [name for name in models if name.startswith("iteration ")]
    rows = dict(models)
    if rounds:
        rows[ORACLE_BEST] = models[max(rounds, key=lambda name: models[name]["consistency"])]
    if (pick := report.get("candidate")) and f"iteration {pick}" in models:
        rows[CANDIDATE] = models[f"iteration {pick}"]
    return rows


def aggregate(per_loop: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per row (``per_loop``: each loop's :func:`rows_of`) and column: mean, std and min
    across the loops that have the row."""
    names = list(dict.fromkeys(name for rows in per_loop for name in rows))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        present = [rows[name] for rows in per_loop if name in rows]
        table[name] = {"loops": {"n": float(len(present))}}
        for column in COLUMNS:
            values = np.array([row[column] for row in present], dtype=float)
            table[name][column] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,  # sample std
                "min": float(values.min()),
            }
    return table


def target_checks(per_loop: list[dict[str, dict[str, Any]]]) -> dict[str, list[bool]]:
    """Per target, whether each loop's candidate meets it (``per_loop``: each loop's
    :func:`rows_of`; loops without a candidate: not met)."""
    checks: dict[str, list[bool]] = {
        "all attributes at least the described base model's": [],
        f"context fidelity within {FIDELITY_MARGIN:.0f} points of the base model": [],
        f"layout variety at least {VARIETY_KEPT:.0%} of the described base model's": [],
    }
    for rows in per_loop:
        pick, base, described = rows.get(CANDIDATE), rows[BASE], rows[DESCRIBED]
        met = [
            pick is not None and pick["all_attributes"] >= described["all_attributes"],
            pick is not None
            and pick["context_fidelity"] >= base["context_fidelity"] - FIDELITY_MARGIN,
            pick is not None
            and pick["layout_variety"] >= VARIETY_KEPT * described["layout_variety"],
        ]
        for values, ok in zip(checks.values(), met, strict=True):
            values.append(ok)
    return checks


def spread_report(folders: list[Path]) -> dict[str, Any]:
    """The spread of several loops' validity reports (see the module docstring)."""
    reports = read_reports(folders)
    per_loop = [rows_of(r) for r in reports]
    return {
        "character": reports[0]["character"],
        "loops": [str(f) for f in folders],
        "candidates": [r.get("candidate") for r in reports],
        "rows": aggregate(per_loop),
        "targets": target_checks(per_loop),
    }


def spread_markdown(spread: dict[str, Any]) -> str:
    """The spread as a markdown table (mean ± std across loops, min) and target counts."""
    loops = len(spread["loops"])
    picks = ", ".join("-" if c is None else str(c) for c in spread["candidates"])
    who = ", ".join(f"{axis} {value}" for axis, value in spread["character"].items())
    lines = [
        "# Loop-to-loop spread",
        "",
        f"Character: {who}. {loops} loops of the same settings; each cell "
        "is the mean ± the standard deviation across loops (min in brackets). "
        f"The loop's candidate per loop: iteration {picks}.",
        "",
        "| model | loops | " + " | ".join(COLUMNS.values()) + " |",
        "|---" * (2 + len(COLUMNS)) + "|",
    ]
    for name, row in spread["rows"].items():
        cells = [
            f"{row[c]['mean']:.1f} ± {row[c]['std']:.1f} ({row[c]['min']:.1f})" for c in COLUMNS
        ]
        lines.append(f"| {name} | {int(row['loops']['n'])} | " + " | ".join(cells) + " |")
    lines += ["", "The loop's candidate against each target, loop by loop:", ""]
    for target, met in spread["targets"].items():
        marks = " ".join("yes" if ok else "no" for ok in met)
        lines.append(f"- {target}: {sum(met)} of {len(met)} loops ({marks})")
    return "\n".join([*lines, ""])
