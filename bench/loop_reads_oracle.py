"""Does the loop's own trait read rank LoRAs the way the oracle does?

Training the same data with another seed moves a LoRA's whole characters by up to 42
points on the world (docs/world.md), so training several and keeping the one the loop's
own evaluation scores best would help only if the loop's read ranks LoRAs as the oracle
(the measuring instrument) does. Each validity report holds, for every iteration's LoRA,
the oracle's read (``consistency``, ``all_attributes``) and the loop's trait scorer's read
of the same images (``loop_traits``: mean per-trait pass rate, renders showing every
trait). This prints, per character over every LoRA in the reports given:

- the correlation of the loop's mean trait pass with the oracle's whole characters;
- pairwise agreement: of the pairs of LoRAs whose whole characters differ by at least
  ``--gap`` points, the share the loop's mean trait pass puts in the same order (what a
  best-of-two pick needs; 50 % is a coin).

Usage: ``python bench/loop_reads_oracle.py docs/validity/settings/*.json reports/*`` (validity
report folders or their ``validity.json`` files; anything else is skipped).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

Read = tuple[float, float]
"""(oracle whole characters %, loop mean trait pass %) of one LoRA."""


def lora_reads(report: dict[str, Any]) -> list[Read]:
    """Each iteration's (oracle whole characters, loop trait mean) in one report."""
    out = []
    for name, model in report["models"].items():
        loop = model.get("loop_traits") or {}
        if name.startswith("iteration") and "mean" in loop:
            out.append((float(model["all_attributes"]), float(loop["mean"])))
    return out


def correlation(reads: list[Read]) -> float:
    """Pearson correlation of the two reads (nan when either does not vary)."""
    xs, ys = [r[0] for r in reads], [r[1] for r in reads]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if not sx or not sy:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)


def pair_agreement(reads: list[Read], gap: float) -> tuple[int, int]:
    """(pairs the loop orders as the oracle does, pairs compared): pairs whose oracle
    reads differ by at least ``gap``; a loop tie counts as half."""
    agree, total = 0.0, 0
    for (ox, lx), (oy, ly) in itertools.combinations(reads, 2):
        if abs(ox - oy) < gap:
            continue
        total += 1
        agree += 0.5 if lx == ly else float((ox > oy) == (lx > ly))
    return round(agree), total


def character_of(report: dict[str, Any]) -> str:
    """The trigger that opens the report's prompt (one character per trigger)."""
    return str(report["prompt"]).split(",")[0].strip()


def gather(folders: list[Path]) -> dict[str, list[Read]]:
    """Every LoRA's reads in the reports (folders or ``validity.json`` files), by
    character, each distinct LoRA once."""
    by_character: dict[str, list[Read]] = defaultdict(list)
    for folder in folders:
        path = folder if folder.suffix == ".json" else folder / "validity.json"
        if path.is_file() and "models" in (report := json.loads(path.read_text())):
            by_character[character_of(report)] += lora_reads(report)
    # Loops that differ only in the workflow (loop.metric) reproduce their shared rounds
    # to the digit: the same LoRA read twice counts once.
    return {name: list(dict.fromkeys(reads)) for name, reads in by_character.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--gap", type=float, default=20.0)
    args = parser.parse_args(argv)
    gathered = gather(args.reports)
    if not gathered:
        sys.stderr.write("no validity.json with loop trait reads in the folders given\n")
        return 2
    print("| character | LoRAs | r(loop trait mean, oracle whole) | pairs ordered right |")
    print("|---|---|---|---|")
    for name, reads in sorted(gathered.items()):
        agree, total = pair_agreement(reads, args.gap)
        share = f"{agree}/{total} ({100 * agree / total:.0f} %)" if total else "-"
        print(f"| {name} | {len(reads)} | {correlation(reads):.2f} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
