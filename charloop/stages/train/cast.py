"""Per-character LoRAs for a cast (``cast.lora: per_character``) and their combination.

Each member's LoRA is trained on that member's solo images only, so no member's weights
ever see another member. The adapter folder holds every member's LoRA under
``members/<name>/`` (load them with ``load_lora_weights(..., adapter_name=...)`` and
``set_adapters(names, weights)``) and, at the top, their exact weighted combination: the
same delta as ``set_adapters`` with ``cast.adapter_weights``, as one ordinary LoRA whose
rank is the sum of the members' ranks. Registry, lineage, promotion and every loader see
the combination like any other adapter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charloop.core import atomic
from charloop.core.hashing import sha256_file
from charloop.params.project import Project
from charloop.stages.contract import StageIdentity, read_output
from charloop.stages.layout import TRAIN_LOG
from charloop.stages.results import Adapter, Dataset
from charloop.stages.train.adapter import (
    AdapterState,
    adapter_state,
    base_spec,
    fit,
    log_record,
    train_summary,
    write_adapter,
)
from charloop.stages.train.checkpoint import Checkpointer
from charloop.stages.train.kohya import KOHYA_WEIGHTS_NAME
from charloop.stages.train.loop import checkpoint_root
from charloop.stages.train.modelspec import BaseSpec

logger = logging.getLogger(__name__)

MEMBERS_DIR = "members"


def _merge(states: list[dict[str, torch.Tensor]], scales: list[float]) -> dict[str, torch.Tensor]:
    merged = {}
    for key in states[0]:
        if key.endswith("lora_A.weight"):  # (rank, in): stack the ranks
            merged[key] = torch.cat([s[key] for s in states], dim=0)
        elif key.endswith("lora_B.weight"):  # (out, rank): fold each member's scale in
            merged[key] = torch.cat([s[key] * c for s, c in zip(states, scales, strict=True)], 1)
        else:
            raise ValueError(f"cannot combine LoRA key {key!r} (not lora_A/lora_B)")
    return merged


def combine(states: list[AdapterState], scales: list[float]) -> AdapterState:
    """One LoRA whose delta is ``sum(scale_i * B_i @ A_i)``: rank = sum of ranks, alpha = rank.

    Args:
        states: The members' LoRAs (same target modules).
        scales: Each member's full multiplier: its adapter weight times its alpha / rank.
    """
    rank = sum(int(s.denoiser_config["r"]) for s in states)
    config = {"r": rank, "lora_alpha": rank}
    combined = AdapterState(
        _merge([s.denoiser for s in states], scales), states[0].denoiser_config | config
    )
    combined.family = states[0].family
    combined.denoiser_model_config = states[0].denoiser_model_config
    for name in states[0].text:
        if all(name in s.text for s in states):
            combined.text[name] = _merge([s.text[name] for s in states], scales)
            combined.text_configs[name] = states[0].text_configs.get(name, {}) | config
    return combined


def train_members(
    project: Project,
    pipe: Any,
    accelerator: Any,
    dataset: Dataset,
    rows: list[dict[str, Any]],
    stage: StageIdentity[Adapter],
    provenance: dict[str, str],
) -> Adapter:
    """Train one LoRA per cast member on its solo images, then write them and their
    combination into ``out_dir``.

    Raises:
        ValueError: a member has no solo image in the dataset.
    """
    params = project.params
    assert params.cast is not None
    tp = params.train
    states: dict[str, AdapterState] = {}
    summaries: dict[str, dict[str, Any]] = {}
    logs: dict[str, dict[str, Any]] = {}
    roots = []
    for member in params.members:
        own = [row for row in rows if row.get("characters") == [member.name]]
        if not own:
            raise ValueError(
                f"cast.lora=per_character: no solo image of {member.name} is in the dataset; "
                "generate more solo images or loosen the filter"
            )
        roots.append(checkpoint_root(stage.out_dir, f"{stage.fingerprint}-{member.name}"))
        checkpoints = Checkpointer(roots[-1], tp.checkpoint_every)
        result = fit(project, pipe, accelerator, Path(dataset.path), own, checkpoints)
        states[member.name] = adapter_state(accelerator, result.models)
        summaries[member.name] = train_summary(result, accelerator.num_processes)
        logs[member.name] = log_record(result.log)
        logger.info("train: %s's LoRA on %d solo images", member.name, result.images)
    if accelerator.is_main_process:
        spec = base_spec(project, pipe)
        output = _write_members(project, states, summaries, logs, stage, provenance, spec)
        for root in roots:
            Checkpointer(root, tp.checkpoint_every).clear()
    accelerator.wait_for_everyone()
    return output if accelerator.is_main_process else read_output(stage.out_dir, Adapter)


def _write_members(
    project: Project,
    states: dict[str, AdapterState],
    summaries: dict[str, dict[str, Any]],
    logs: dict[str, dict[str, Any]],
    stage: StageIdentity[Adapter],
    provenance: dict[str, str],
    spec: BaseSpec,
) -> Adapter:
    params = project.params
    assert params.cast is not None
    tp = params.train
    metadata = dict(provenance)
    weights = {name: params.cast.weight(name) for name in states}
    with atomic.staged_dir(stage.out_dir) as staging:
        for name, state in states.items():
            folder = staging / MEMBERS_DIR / name
            folder.mkdir(parents=True)
            trigger = params.member(name).trigger
            member = metadata | {"member": name, "trigger": trigger}
            write_adapter(folder, state, tp.rank, tp.alpha, member, spec)
        scales = [weights[name] * tp.alpha / tp.rank for name in states]
        combined = combine(list(states.values()), scales)
        rank = int(combined.denoiser_config["r"])
        path = write_adapter(
            staging, combined, rank, rank, metadata | {"adapter_weights": str(weights)}, spec
        )
        atomic.write_json(staging / TRAIN_LOG, _mean_log(logs) | {"members": logs})
        return stage.seal(
            staging,
            steps=max(s["steps"] for s in summaries.values()),
            final_loss=float(np.mean([s["final_loss"] for s in summaries.values()])),
            images=sum(s["images"] for s in summaries.values()),
            processes=next(iter(summaries.values()))["processes"],
            members=summaries,
            adapter_weights=weights,
            weights_sha256=sha256_file(path),
            kohya_sha256=sha256_file(staging / KOHYA_WEIGHTS_NAME),
        )


def _mean_log(logs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-step mean of the members' curves (what a single-LoRA ``train_log.json`` holds)."""
    record: dict[str, Any] = {}
    for key in ("loss", "learning_rate"):
        series = [log[key] for log in logs.values()]
        steps = min(len(s) for s in series)
        record[key] = [float(np.mean([s[i] for s in series])) for i in range(steps)]
    points: dict[float, list[float]] = {}
    for log in logs.values():
        for point in log["validation_loss"]:
            points.setdefault(point["step"], []).append(point["loss"])
    record["validation_loss"] = [
        {"step": step, "loss": float(np.mean(values))}
        for step, values in sorted(points.items())
        if len(values) == len(logs)
    ]
    return record
