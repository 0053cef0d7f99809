"""Aimed generation: spend a round's prompts on the traits the previous LoRA gets wrong.

Each round reads the evaluation of the LoRA it renders with (``06_evaluation/metrics.json``
beside its ``05_adapter``): every trait that failed on at least ``traits.aim.min_failure``
of the evaluation's images is named, after the character's declared traits, in
``traits.aim.share`` of each prompt's images (without the trigger while no LoRA renders,
see :attr:`Aim.trigger`). Before the first evaluation every discovered
trait is aimed at (the prompt names only the declared ones). Captions never name aimed
traits (they are built from the declared traits and the context), so training binds them
to the trigger. Each manifest row records what it aimed at and why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charloop.params.project import Project
from charloop.scenes.traits import resolve_traits


@dataclass(frozen=True)
class Aim:
    """What a round aims at, per character, and why."""

    traits: dict[str, list[str]]
    """Character -> the traits aimed at (failing, or discovered before an evaluation)."""
    described: dict[str, list[str]]
    """Character -> every trait, declared first: what a described prompt names."""
    failure: dict[str, dict[str, float]]
    """Character -> trait -> failure rate in the evaluation read (empty before one)."""
    source: str
    """Where the failure rates come from."""
    share: float
    """Share of each prompt's images that are aimed."""

    def count(self, images_per_prompt: int) -> int:
        """How many of a prompt's images are aimed."""
        return math.ceil(self.share * images_per_prompt) if any(self.traits.values()) else 0

    def record(self, name: str) -> dict[str, Any]:
        """The manifest's ``aim`` of an aimed image of ``name``."""
        rates = self.failure.get(name, {})
        return {
            "traits": self.traits[name],
            "failure_rates": {t: round(rates[t], 3) for t in self.traits[name] if t in rates},
            "source": self.source,
            "described": self.described[name],
            "lora": False,
        }


def evaluation_of(adapter_path: str | None) -> Path | None:
    """The metrics file of the evaluation of the LoRA in ``adapter_path``, when it exists."""
    if adapter_path is None:
        return None
    metrics = Path(adapter_path).parent / "06_evaluation" / "metrics.json"
    return metrics if metrics.is_file() else None


def plan_aim(project: Project, adapter_path: str | None) -> Aim | None:
    """The round's :class:`Aim`; None without a traits section or with ``share: 0``."""
    settings = project.params.traits
    if settings is None or settings.aim.share == 0:
        return None
    resolved = resolve_traits(project)
    described = {name: t.all for name, t in resolved.items()}
    metrics = evaluation_of(adapter_path)
    read = json.loads(metrics.read_text()).get("traits") if metrics else None
    if not read:
        return Aim(
            {name: list(t.discovered) for name, t in resolved.items()},
            described,
            {},
            "no evaluation yet: every discovered trait",
            settings.aim.share,
        )
    traits: dict[str, list[str]] = {}
    failure: dict[str, dict[str, float]] = {}
    for name, member in resolved.items():
        rates = read["characters"].get(name, {}).get("lora", {}).get("traits", {})
        failure[name] = {t: 1.0 - float(rates[t]) for t in member.all if t in rates}
        traits[name] = [
            t for t in member.all if failure[name].get(t, 1.0) >= settings.aim.min_failure
        ]
    source = f"evaluation {Path(metrics).parent.parent.name}" if metrics else ""
    return Aim(traits, described, failure, source, settings.aim.share)
