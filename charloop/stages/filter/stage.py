"""Filter: automatic discriminators decide which generated images become training data.

Every decision carries its reasons and scores in ``report.jsonl``; ``kept.jsonl`` holds
the manifest rows of the images that passed, and ``contact_sheet.png`` shows kept vs
rejected.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from charloop.core import atomic
from charloop.core.contact_sheet import contact_sheet
from charloop.core.hashing import tree_digest
from charloop.models.embedder import Embedder, embed_in_batches, load_embedder
from charloop.params.filter import FilterParams
from charloop.params.project import Project
from charloop.scenes.prompts import scene_text
from charloop.scenes.references import load_references, open_image
from charloop.scenes.traits import resolve_traits, traits_identity
from charloop.stages.contract import NotEnoughImages, StageIdentity, identity
from charloop.stages.filter.cast_identity import cast_identity
from charloop.stages.filter.discriminators import (
    MISSED_TRAIT,
    Decision,
    apply_threshold,
    check_duplicates,
    check_quality,
    check_traits,
    identity_scores,
    nearest_references,
)
from charloop.stages.filter.traits import TraitReader, trait_facts, trait_reader
from charloop.stages.results import Filtered, Generated

logger = logging.getLogger(__name__)


__all__ = ["NotEnoughImages", "filter_identity", "judge", "run_filter"]


def judge(
    rows: list[dict[str, Any]],
    image_dir: Path,
    rules: FilterParams,
    embedder: Embedder | None = None,
    references: np.ndarray | dict[str, np.ndarray | None] | None = None,
    texts: list[str] | None = None,
    laid_out: bool = False,
    reference_files: list[str] | None = None,
    trait_reader: TraitReader | None = None,
) -> tuple[list[Decision], dict[str, Any], dict[str, Image.Image]]:
    """Score and decide every manifest row, running the discriminators in configured order.

    Args:
        rows: Manifest rows (``id``, ``file``, ``sha256``).
        image_dir: Folder holding the files.
        rules: Filter params.
        embedder: Needed by the identity and prompt-adherence checks.
        references: Embeddings of the reference images (identity anchor), if any; for a
            cast, a dict of them per character (rows then name their ``characters``).
        texts: Per-row prompts without the trigger (prompt adherence).
        laid_out: A cast's joint scenes were generated side by side.
        reference_files: File names of ``references`` (one character): each decision
            records its nearest one.
        trait_reader: Scores every solo image's traits (recorded whatever the rules; the
            ``traits`` discriminator rejects on them).

    Returns:
        The decisions (manifest order), facts about the run (identity anchor...), and the
        decoded images by id (exact duplicates and unreadable files are absent).
    """
    decisions = [Decision(id=row["id"], file=row["file"]) for row in rows]
    images: dict[str, Image.Image] = {}
    first_by_sha: dict[str, str] = {}
    for row, decision in zip(rows, decisions, strict=True):
        if rules.check("duplicates") and row["sha256"] in first_by_sha:
            decision.reasons.append(f"exact duplicate of {first_by_sha[row['sha256']]}")
            continue
        first_by_sha.setdefault(row["sha256"], row["id"])
        try:
            images[row["id"]] = open_image(image_dir / row["file"])
        except OSError as exc:
            decision.reasons.append(f"unreadable image: {exc}")
    readable = [d for d in decisions if d.id in images]
    facts: dict[str, Any] = {}
    embeddings: np.ndarray | None = None
    if trait_reader is not None:
        trait_reader.read(rows, readable, images)
    for rule in rules.discriminators:
        if rule.type == "traits":
            assert trait_reader is not None  # validated: the traits check needs a scorer
            check_traits(readable, rule, trait_reader.min_score)
        elif rule.type == "quality":
            for decision in readable:
                check_quality(decision, images[decision.id], rule)
        elif rule.type == "duplicates":
            check_duplicates(decisions, images, rule)
        elif readable:
            if embedder is None:
                raise ValueError(f"the {rule.type} discriminator needs an embedder")
            if embeddings is None:
                pictures = [images[d.id] for d in readable]
                embeddings = embed_in_batches(embedder, pictures, rules.embed_batch_size)
            if rule.type == "identity" and isinstance(references, dict):
                present = {row["id"]: list(row["characters"]) for row in rows}
                facts["identity"] = cast_identity(
                    readable,
                    present,
                    images,
                    embeddings,
                    references,
                    rule,
                    lambda crops: embed_in_batches(embedder, crops, rules.embed_batch_size),
                    laid_out,
                )
            elif rule.type == "identity":
                assert not isinstance(references, dict)
                scores, facts["identity"] = identity_scores(embeddings, references, rule)
                pick = _ranked(readable, rule.rank_among)
                ranked = [d for d, p in zip(readable, pick, strict=True) if p]
                apply_threshold(ranked, scores[pick], "identity", rule)
                if references is not None and len(references) and reference_files:
                    nearest = nearest_references(embeddings, references)
                    for decision, index in zip(readable, nearest, strict=True):
                        decision.nearest_reference = reference_files[int(index)]
            else:
                by_id = dict(zip([r["id"] for r in rows], texts or [], strict=False))
                text_emb = embedder.embed_texts([by_id[d.id] for d in readable])
                assert text_emb is not None  # validated: prompt adherence needs CLIP
                pick = _ranked(readable, rule.rank_among)
                ranked = [d for d, p in zip(readable, pick, strict=True) if p]
                prompt_scores = np.sum(embeddings * text_emb, 1)[pick]
                apply_threshold(ranked, prompt_scores, "prompt", rule)
    return decisions, facts, images


def _ranked(decisions: list[Decision], among: str) -> np.ndarray:
    """Mask of the decisions a score threshold ranks: all, or those not rejected so far."""
    return np.array([among == "all" or d.kept for d in decisions], dtype=bool)


def _references_dirs(project: Project) -> dict[str, Path | None]:
    return {
        m.name: project.resolve(m.references) if m.references else None
        for m in project.params.members
    }


def _embedder_ref(project: Project) -> str | None:
    rules = project.params.filter
    needs_embedder = any(r.type in ("identity", "prompt_adherence") for r in rules.discriminators)
    return project.model_ref(rules.embedder.path) if needs_embedder else None


def filter_identity(
    project: Project, generated: Generated, out_dir: str | Path
) -> StageIdentity[Filtered]:
    """Everything that determines the filter's decisions."""
    params = project.params
    return identity(
        Filtered,
        out_dir,
        __name__,
        rules=params.filter.model_dump(),
        generated=generated.digest,
        embedder=project.portable(ref) if (ref := _embedder_ref(project)) else None,
        references={
            name: tree_digest(folder) if folder and folder.is_dir() else None
            for name, folder in _references_dirs(project).items()
        },
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        traits=traits_identity(project),
    )


def run_filter(project: Project, generated: Generated, out_dir: str | Path) -> Filtered:
    """Write ``report.jsonl``, ``kept.jsonl`` and a kept/rejected contact sheet.

    Raises:
        NotEnoughImages: fewer than ``filter.min_kept`` images passed.
    """
    params = project.params
    rules = params.filter
    refs_dirs = _references_dirs(project)
    embedder_ref = _embedder_ref(project)
    stage = filter_identity(project, generated, out_dir)
    out_dir = Path(out_dir)
    output = stage.done()
    if output is None:
        rows = atomic.read_jsonl(Path(generated.path) / "manifest.jsonl")
        refs = {name: load_references(folder) for name, folder in refs_dirs.items()}
        embedder = load_embedder(rules.embedder, embedder_ref) if embedder_ref else None
        ref_emb = {
            name: embed_in_batches(embedder, ref.images, rules.embed_batch_size)
            if embedder and ref.images
            else None
            for name, ref in refs.items()
        }
        texts = [scene_text(params, row) for row in rows]
        anchors = ref_emb if params.cast else ref_emb[params.subject]
        laid_out = params.cast is not None and params.cast.joint.layout == "side_by_side"
        files = None if params.cast else refs[params.subject].files
        reader = trait_reader(project)
        decisions, facts, images = judge(
            rows, Path(generated.path), rules, embedder, anchors, texts, laid_out, files, reader
        )
        if reader is not None:
            resolved = resolve_traits(project)
            facts["traits"] = {
                name: resolved[name].as_dict() | rates
                for name, rates in trait_facts(reader, decisions).items()
            }
        kept_ids = {d.id for d in decisions if d.kept}
        with atomic.staged_dir(out_dir) as staging:
            atomic.write_jsonl(staging / "report.jsonl", [d.as_row() for d in decisions])
            atomic.write_jsonl(staging / "kept.jsonl", [r for r in rows if r["id"] in kept_ids])
            _sheet(decisions, images).save(staging / "contact_sheet.png")
            output = stage.seal(
                staging,
                candidates=len(rows),
                kept=len(kept_ids),
                references_used=sum(len(r.files) for r in refs.values()),
                references_skipped={k: v for r in refs.values() for k, v in r.skipped.items()},
                identity=facts.get("identity"),
                traits=facts.get("traits"),
            )
        logger.info("filter: kept %d of %d images", len(kept_ids), len(rows))
    if output.kept < rules.min_kept:
        report = out_dir / "report.jsonl"
        raise NotEnoughImages(
            f"filter kept {output.kept} of {output.candidates} images, "
            f"fewer than filter.min_kept={rules.min_kept}; {rejection_summary(report)}"
            f"see {report} for every image's reasons"
        )
    return output


def rejection_summary(report: Path, most: int = 3) -> str:
    """The commonest rejection reasons in a filter report, with what would loosen them.

    Reasons are grouped without their numbers ("missed trait 'amber eyes' (0.20 < 0.5)" and
    "(0.31 < 0.5)" are one reason), so the user sees which rule starves the round.
    """
    counts: Counter[str] = Counter()
    for row in atomic.read_jsonl(report):
        counts.update({_reason_kind(reason) for reason in row.get("reasons", [])})
    commonest = counts.most_common(most)
    if not commonest:
        return ""
    top = ", ".join(f"{reason} ({n})" for reason, n in commonest)
    hint = "loosen the thresholds or generate more images"
    if any(reason.startswith(MISSED_TRAIT) for reason, _ in commonest):
        hint = (
            "a trait the base model rarely draws, even described, can be left to the "
            "references: the traits discriminator's max_missed, or traits.ignore for a "
            "discovered one; or generate more images"
        )
    return f"most rejected for: {top}; {hint}; "


def _reason_kind(reason: str) -> str:
    """A reason without its scores: "contrast 0.0123 < 0.99" -> "contrast # < #"; a missed
    trait keeps its name (the trait is the kind)."""
    kind = re.sub(r" \(.*", "", reason)
    return kind if kind.startswith(MISSED_TRAIT) else re.sub(r"\d+(\.\d+)?", "#", kind)


def _sheet(
    decisions: list[Decision], images: dict[str, Image.Image], columns: int = 8
) -> Image.Image:
    """Kept and rejected images side by side (files that were never decoded are left out)."""
    panels: dict[str, list[Image.Image]] = {"kept": [], "rejected": []}
    for decision in decisions:
        if decision.id in images:
            panels["kept" if decision.kept else "rejected"].append(images[decision.id])
    return contact_sheet(panels, columns=columns, tile=64)
