"""How good a kept set each selection rule would have picked, read by the world's oracle.

Every finished iteration's filter report (``02_filtered/report.jsonl``) holds, per
candidate, the trait scorer's score of each trait and, for the images that showed every
trait, the identity score. This re-selects each iteration's candidates offline with other
rules and asks the oracle (the measuring instrument, never part of the loop) how many of
the images each rule keeps show the whole character (every attribute right), and which
attribute the kept images get wrong most. No image is drawn and no model trained.

Rules (all among the non-duplicate images that show every trait, the loop's traits check):

- ``kept``: what the iteration's own filter kept.
- ``passing``: every one of them.
- ``identity 50%``: the closer half by identity score (the shipped default).
- ``traits 50%``: the surer half by joint trait score (``filter: traits: keep_best: 0.5``).
- ``oracle 50%``: the half the oracle reads best (a ceiling no scorer reaches).

Usage: ``python bench/kept_set_rules.py runs/exp-a runs/exp-b`` (world characters whose
``references/<name>/identity.json`` holds the truth; other runs are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charloop.core.atomic import read_jsonl  # noqa: E402
from charloop.scenes.references import open_image  # noqa: E402
from charloop.stages.filter.discriminators import joint_trait_score  # noqa: E402

Row = dict[str, Any]
RULES = ("kept", "passing", "identity 50%", "traits 50%", "oracle 50%")


def iterations(folders: list[Path]) -> list[Path]:
    """Every iteration folder under ``folders`` with a filter report."""
    found = {p.parent.parent for f in folders for p in f.rglob("02_filtered/report.jsonl")}
    return sorted(found)


def truth_of(character: str) -> dict[str, str] | None:
    """A world character's attributes (its references' ``identity.json``), or None."""
    path = ROOT / "references" / character / "identity.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return dict(data.get("attributes", data))


def read_iteration(folder: Path, oracle: Any, truth: dict[str, str]) -> list[Row]:
    """One row per scored candidate: the scorer's reads and the oracle's verdict."""
    rows = [r for r in read_jsonl(folder / "02_filtered" / "report.jsonl") if r.get("traits")]
    images = [open_image(folder / "01_generated" / r["file"]) for r in rows]
    out = []
    for row, read in zip(rows, oracle.read(images), strict=True):
        traits = [v for k, v in row["scores"].items() if k.startswith("trait: ")]
        wrong = [a for a, value in truth.items() if read.get(a) != value]
        out.append(
            {
                "kept": row["decision"] == "keep",
                "passing": all(row["traits"].values()),
                "duplicate": any("duplicate" in why for why in row["reasons"]),
                "identity": row["scores"].get("identity", -math.inf),
                "certainty": joint_trait_score(traits),
                "wrong": wrong,
            }
        )
    return out


def _half(rows: list[Row], key: Callable[[Row], Any]) -> list[Row]:
    return sorted(rows, key=key, reverse=True)[: max(1, math.ceil(len(rows) / 2))]


def select(rows: list[Row], rule: str) -> list[Row]:
    """The rows ``rule`` keeps (see the module docstring)."""
    if rule == "kept":
        return [r for r in rows if r["kept"]]
    passing = [r for r in rows if r["passing"] and not r["duplicate"]]
    if not passing or rule == "passing":
        return passing
    if rule == "identity 50%":
        return _half(passing, lambda r: r["identity"])
    if rule == "traits 50%":
        return _half(passing, lambda r: r["certainty"])
    return _half(passing, lambda r: -len(r["wrong"]))


def summarize(by_character: dict[str, list[list[Row]]]) -> list[str]:
    """Markdown: per character and rule, the kept images' whole-character share (mean over
    iterations), their mean count, and the attribute wrong most often."""
    lines = [
        "| character | iterations | " + " | ".join(RULES) + " |",
        "|---|---|" + "---|" * len(RULES),
    ]
    for character, runs in sorted(by_character.items()):
        cells = []
        for rule in RULES:
            shares, sizes, wrong = [], [], Counter[str]()
            for rows in runs:
                kept = select(rows, rule)
                if kept:
                    shares.append(100 * sum(not r["wrong"] for r in kept) / len(kept))
                    sizes.append(len(kept))
                    wrong.update(a for r in kept for a in r["wrong"])
            worst = wrong.most_common(1)
            miss = f", {worst[0][0]} {100 * worst[0][1] / sum(sizes):.0f}%" if worst else ""
            share = sum(shares) / max(len(shares), 1)
            cells.append(f"{share:.1f} ({sum(sizes) / max(len(sizes), 1):.0f} img{miss})")
        lines.append(f"| {character} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="loop workdirs (runs/...)")
    parser.add_argument("--oracle", type=Path, default=ROOT / "models" / "world-oracle")
    args = parser.parse_args()
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    from charloop_world.oracle import load_oracle

    oracle = load_oracle(args.oracle)
    by_character: dict[str, list[list[Row]]] = defaultdict(list)
    for folder in iterations(args.folders):
        character = folder.parent.parent.name
        truth = truth_of(character)
        rows = read_iteration(folder, oracle, truth) if truth else []
        if rows:
            by_character[character].append(rows)
    if not by_character:
        parser.error("no iteration of a world character with a filter report found")
    print("\n".join(summarize(by_character)))


if __name__ == "__main__":
    main()
