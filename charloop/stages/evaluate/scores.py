"""Embeddings of an evaluation's images and the metrics computed from them.

A single character gets the metrics of :mod:`charloop.eval_metrics`. A cast gets them per
member (on its solo scenes; the flat names then hold the mean over members and
``<member>.<metric>`` each member's value), plus:

- ``<member>.joint_identity``: similarity of the member's strip of each joint scene to
  its own identity anchor (strips assigned as the filter assigns them);
- ``joint_blend_rate``: the share of joint scenes where a strip resembles another member
  more than its own;
- ``bleed.<a>.<b>``: similarity of ``a``'s solo outputs to ``b``'s anchor (identity
  bleed), and ``bleed_margin.<a>.<b>``: how much closer they are to ``a``'s own anchor.

Every metric also has its ``base_`` twin (the same prompts without the LoRA). A member's
anchor is its mean reference embedding, else the mean of its solo training images.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from charloop.core import atomic
from charloop.core.image_layout import layout_features
from charloop.models.embedder import Embedder, embed_in_batches
from charloop.params.schema import Params
from charloop.scenes.prompts import context_id, scene_text
from charloop.scenes.references import ReferenceSet, open_image
from charloop.scenes.render import ImageJob
from charloop.scenes.strips import assign_strips, strips
from charloop.stages.evaluate.metrics import consistency_metrics, layout_metrics, with_and_without

EMBED_BATCH = 32
MEMBER_HEADLINES = ("identity_consistency", "reference_similarity", "trigger_effect")


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass
class ScoredImages:
    """Embeddings of the rendered jobs (with and without the LoRA) and their anchors."""

    jobs: list[ImageJob]
    images: dict[str, list[Image.Image]]
    embeddings: dict[str, np.ndarray]
    texts: np.ndarray | None
    train: dict[str, np.ndarray | None]
    references: dict[str, np.ndarray | None]
    references_used: int
    embedder: Embedder

    @classmethod
    def embed(
        cls,
        params: Params,
        embedder: Embedder,
        jobs: list[ImageJob],
        lora_images: list[Image.Image],
        base_images: list[Image.Image],
        dataset_dir: Path,
        references: dict[str, ReferenceSet],
    ) -> ScoredImages:
        """Embed the outputs, their context prompts, the training images and references."""
        prompts = [
            scene_text(params, {"characters": list(j.characters), "context": j.context})
            for j in jobs
        ]
        rows = atomic.read_jsonl(dataset_dir / "metadata.jsonl")
        train: dict[str, np.ndarray | None] = {}
        for member in params.members:  # a single character's rows all count as its own
            own = [r for r in rows if r.get("characters", [member.name]) == [member.name]]
            pictures = [open_image(dataset_dir / r["file_name"]) for r in own]
            train[member.name] = embed_in_batches(embedder, pictures, EMBED_BATCH) if own else None
        return cls(
            jobs=jobs,
            images={"lora": lora_images, "base": base_images},
            embeddings={
                "lora": embed_in_batches(embedder, lora_images, EMBED_BATCH),
                "base": embed_in_batches(embedder, base_images, EMBED_BATCH),
            },
            texts=embedder.embed_texts(prompts),
            train=train,
            references={
                name: embed_in_batches(embedder, ref.images, EMBED_BATCH) if ref.images else None
                for name, ref in references.items()
            },
            references_used=sum(len(ref.files) for ref in references.values()),
            embedder=embedder,
        )

    def _member_metrics(self, indices: list[int], member: str, which: str) -> dict[str, Any]:
        texts = self.texts[indices] if self.texts is not None else None
        groups = [context_id(self.jobs[i].context) for i in indices]
        emb = self.embeddings[which][indices]
        seeds = [self.jobs[i].seed for i in indices]
        metrics = consistency_metrics(
            emb, texts, self.train[member], groups, self.references[member], seeds
        )
        layout = layout_features([self.images[which][i] for i in indices])
        return metrics | layout_metrics(layout, groups)

    def metrics(self, params: Params) -> dict[str, Any]:
        """Every evaluation metric (see the module docstring)."""
        solo = {
            m.name: [i for i, j in enumerate(self.jobs) if j.characters in ((m.name,), ())]
            for m in params.members
        }
        members = {
            name: with_and_without(
                self._member_metrics(idx, name, "lora"), self._member_metrics(idx, name, "base")
            )
            for name, idx in solo.items()
        }
        if params.cast is None:
            return members[params.subject]
        metrics = _mean_over(members)
        anchors = self._anchors()
        laid_out = params.cast.joint.layout == "side_by_side"
        for which, prefix in (("lora", ""), ("base", "base_")):
            metrics.update(
                {f"{prefix}{k}": v for k, v in self._bleed(solo, anchors, which).items()}
            )
            joint = self._joint(anchors, which, laid_out)
            metrics.update({f"{prefix}{k}": v for k, v in joint.items()})
        return metrics

    def _anchors(self) -> dict[str, np.ndarray]:
        anchors = {}
        for name, refs in self.references.items():
            source = refs if refs is not None and len(refs) else self.train[name]
            if source is not None and len(source):
                anchors[name] = _unit(source.mean(0))
        return anchors

    def _bleed(
        self, solo: dict[str, list[int]], anchors: dict[str, np.ndarray], which: str
    ) -> dict[str, float]:
        scores = {}
        for a, b in itertools.permutations(anchors, 2):
            outputs = self.embeddings[which][solo[a]]
            bleed = float((outputs @ anchors[b]).mean())
            scores[f"bleed.{a}.{b}"] = bleed
            scores[f"bleed_margin.{a}.{b}"] = float((outputs @ anchors[a]).mean()) - bleed
        return scores

    def _joint(
        self, anchors: dict[str, np.ndarray], which: str, laid_out: bool
    ) -> dict[str, float]:
        own: dict[str, list[float]] = {}
        blends = []
        for job, image in zip(self.jobs, self.images[which], strict=True):
            names = list(job.characters)
            if len(names) < 2 or any(n not in anchors for n in names):
                continue
            pieces = embed_in_batches(self.embedder, strips(image, len(names)), EMBED_BATCH)
            sims = pieces @ np.stack([anchors[n] for n in names]).T
            assignment = assign_strips(sims, laid_out)
            for strip, member in enumerate(assignment):
                own.setdefault(names[member], []).append(float(sims[strip, member]))
            blends.append(any(sims[s].argmax() != m for s, m in enumerate(assignment)))
        scores = {f"{name}.joint_identity": float(np.mean(v)) for name, v in own.items()}
        if blends:
            scores["joint_blend_rate"] = float(np.mean(blends))
        return scores


def _mean_over(members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat metrics averaged over members, each member's headline metrics, per-context
    entries keyed ``<member>/<context id>``."""
    metrics: dict[str, Any] = {}
    names = {k for m in members.values() for k, v in m.items() if isinstance(v, float)}
    for key in sorted(names):
        values = [m[key] for m in members.values() if isinstance(m.get(key), float)]
        metrics[key] = float(np.mean(values))
    for name, member in members.items():
        for key in MEMBER_HEADLINES:
            if isinstance(member.get(key), float):
                metrics[f"{name}.{key}"] = member[key]
                metrics[f"base_{name}.{key}"] = member.get(f"base_{key}", member[key])
    for part in ("per_context", "base_per_context"):
        metrics[part] = {
            f"{name}/{cid}": entry for name, m in members.items() for cid, entry in m[part].items()
        }
    return metrics
