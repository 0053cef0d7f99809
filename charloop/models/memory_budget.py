"""A project's memory plan: its workload, the limit it must fit and the plan it trains with.

Used by the preflight (print the estimate, refuse a plan that cannot fit), by the train
stage (``train.memory.auto`` resolves to a concrete plan) and by the rendering stages
(``train.memory.pipeline_offload: auto``). On CPU without ``train.memory.budget_gb``
nothing is refused and the plan is the params' own.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch

from charloop.core.errors import BadInput
from charloop.families.base import ModelFamily
from charloop.models.memory_plan import (
    GIB,
    MARGIN,
    Estimate,
    Plan,
    Workload,
    choose,
    estimate,
    fits,
    pipeline_offload,
    smallest_fitting,
)
from charloop.models.memory_sizes import (
    component_params,
    denoiser_size,
    local_config,
    reference_text_config,
    vae_factor,
)
from charloop.params.schema import Params
from charloop.params.train import TrainParams

logger = logging.getLogger(__name__)

NEEDS = {"nf4": "bitsandbytes", "adamw8bit": "bitsandbytes", "fp8": "torchao"}
"""The package each reduced setting needs (the ``lowmem`` extra)."""


class MemoryBudgetExceeded(BadInput):
    """The planned training run cannot fit the device or ``train.memory.budget_gb``."""


@dataclass(frozen=True)
class MemoryReport:
    """The plan a run trains with, its estimate, and the limit it was checked against."""

    estimate: Estimate
    limit_gib: float | None
    limit_source: str
    """'train.memory.budget_gb', 'cuda:0 free memory', or 'none (cpu)'."""
    chosen: bool = False
    """Whether ``train.memory.auto`` picked the plan."""

    def line(self) -> str:
        limit = "no limit" if self.limit_gib is None else f"{gib_text(self.limit_gib)} GiB"
        auto = " (picked by train.memory.auto)" if self.chosen else ""
        return f"memory plan {self.estimate.line()} vs {limit} [{self.limit_source}]{auto}"


def gib_text(value: float) -> str:
    """GiB with one decimal, or three significant digits below 1 (tiny models)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def current_plan(tp: TrainParams) -> Plan:
    return Plan(tp.memory.weights, tp.memory.optimizer, tp.gradient_checkpointing)


def fixed_settings(tp: TrainParams) -> set[str]:
    """Plan settings the params file writes itself (``auto`` keeps them)."""
    fixed = {f for f in ("weights", "optimizer") if f in tp.memory.model_fields_set}
    return fixed | ({"checkpointing"} if "gradient_checkpointing" in tp.model_fields_set else set())


def compute_bytes(mixed_precision: str, device: torch.device) -> int:
    """Bytes per frozen weight and activation: float32 on CPU unless asked otherwise."""
    if mixed_precision == "no" or (mixed_precision == "auto" and device.type != "cuda"):
        return 4
    return 2


def limit_of(tp: TrainParams, device: torch.device) -> tuple[float | None, str]:
    """(GiB, where it comes from): the budget, else the CUDA device's free memory (what
    other processes leave; this process's own cached blocks count as free)."""
    if tp.memory.budget_gb is not None:
        return tp.memory.budget_gb, "train.memory.budget_gb"
    if device.type == "cuda":  # free, plus what this process holds and could release
        free, _total = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_reserved(device)) / GIB, f"{device} free memory"
    return None, f"none ({device.type})"


def workload(params: Params, ref: str, family: ModelFamily, device: torch.device) -> Workload:
    """What the project trains, sized from the base's configs (see memory_sizes)."""
    tp = params.train
    size = denoiser_size(family.name, local_config(ref, family.denoiser[0]))
    text_params = text_lora = 0
    if tp.train_text_encoder or tp.trigger_embedding.enabled:  # encoders in the graph
        for name in family.trained_text_encoders():
            text_params += component_params(family.name, ref, name)
            config = local_config(ref, name) or reference_text_config(family.name, name)
            width, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
            if tp.train_text_encoder:
                text_lora += 4 * tp.rank * 2 * width * layers  # q, k, v, out projections
            if tp.trigger_embedding.enabled:
                text_lora += tp.trigger_embedding.max_vectors * width
    pipeline = 0
    if not tp.memory.offload_encoders or device.type != "cuda":  # the base pipeline stays
        parts = ("vae", *family.text_encoders)
        pipeline = size.params + sum(component_params(family.name, ref, c) for c in parts)
    targets = tuple(tp.target_modules or family.default_targets)
    return Workload(
        size, params.generate.resolution, tp.batch_size, tp.rank, targets,
        compute_bytes=compute_bytes(tp.mixed_precision, device), cuda=device.type == "cuda",
        vae_downsample=vae_factor(ref), text_encoder_params=text_params,
        text_lora_params=text_lora, pipeline_params=pipeline,
    )  # fmt: skip


def plan_report(params: Params, ref: str, family: ModelFamily, device: torch.device) -> MemoryReport:
    """The plan the run trains with (``auto`` resolved) and its estimate."""
    tp = params.train
    work = workload(params, ref, family, device)
    limit, source = limit_of(tp, device)
    if tp.memory.auto and limit is not None:
        value = choose(work, current_plan(tp), fixed_settings(tp), limit)
        return MemoryReport(value, limit, source, chosen=True)
    return MemoryReport(estimate(work, current_plan(tp)), limit, source)


def check_memory(params: Params, ref: str, family: ModelFamily, device: torch.device) -> MemoryReport:
    """The plan's report; refuses a plan over its limit (plus :data:`MARGIN`) or one whose
    package is missing.

    Raises:
        MemoryBudgetExceeded: naming the settings that would fit, with their estimate.
        BadInput: a setting needs bitsandbytes or torchao and it is not installed.
    """
    report = plan_report(params, ref, family, device)
    plan = report.estimate.plan
    for field, value in (("weights", plan.weights), ("optimizer", plan.optimizer)):
        package = NEEDS.get(value)
        if package and importlib.util.find_spec(package) is None:
            raise BadInput(
                f"train.memory.{field} '{value}' needs {package}, which is not installed: "
                "pip install 'charloop[lowmem]' (or choose another plan)"
            )
    limit = report.limit_gib
    if limit is None or fits(report.estimate, limit, MARGIN):
        return report
    need = report.estimate.gib()
    work = workload(params, ref, family, device)
    better = smallest_fitting(work, plan, limit)
    if better is not None:
        changes = [f"{k}: {str(v).lower()}" for k, v in better.plan.settings().items()
                   if v != plan.settings()[k]]  # fmt: skip
        fix = f"{', '.join(changes)} would need {gib_text(better.gib())} GiB"
    else:
        fix = ("even the smallest plan does not fit: lower train.batch_size or "
               "generate.resolution, or raise train.memory.budget_gb")  # fmt: skip
    raise MemoryBudgetExceeded(
        f"train.memory: the {plan.label()} plan needs about {gib_text(need)} GiB but "
        f"{report.limit_source} allows {gib_text(limit)} GiB; {fix}"
    )


def render_offload(params: Params, ref: str) -> str:
    """The offload of the generation/evaluation pipeline: ``train.memory.pipeline_offload``,
    'auto' resolved from the pipeline's weights (half precision) and the limit; 'none'
    off CUDA (logged when something else was asked for)."""
    from charloop.families.detect import resolve_base
    from charloop.models.pipeline import resolve_device

    choice = params.train.memory.pipeline_offload
    device = resolve_device(params.base_model.device)
    if device.type != "cuda":
        if choice not in ("auto", "none"):
            logger.info("pipeline offload '%s' is a no-op on %s", choice, device.type)
        return "none"
    if choice != "auto":
        return choice
    family = resolve_base(params.base_model, ref).family
    limit, _ = limit_of(params.train, device)
    size = denoiser_size(family.name, local_config(ref, family.denoiser[0]))
    parts = [size.params] + [
        component_params(family.name, ref, c) for c in ("vae", *family.text_encoders)
    ]
    assert limit is not None  # a CUDA device always has one
    return pipeline_offload(sum(parts) * 2, max(parts) * 2, limit)


def training_params(
    params: Params, ref: str, family: ModelFamily, device: torch.device
) -> TrainParams:
    """``train`` as the run trains: ``train.memory.auto`` resolved to its plan."""
    tp = params.train
    if not tp.memory.auto:
        return tp
    report = plan_report(params, ref, family, device)
    logger.info("train: %s", report.line())
    return effective_train_params(tp, report.estimate.plan)


def effective_train_params(tp: TrainParams, plan: Plan) -> TrainParams:
    """``tp`` with the plan's weights, optimizer and checkpointing."""
    memory = tp.memory.model_copy(update={"weights": plan.weights, "optimizer": plan.optimizer})
    return tp.model_copy(update={"memory": memory, "gradient_checkpointing": plan.checkpointing})


def describe(report: MemoryReport) -> dict[str, Any]:
    """The report as JSON-able facts (logs, the bench scripts)."""
    e = report.estimate
    return {"plan": e.plan.label(), "total_gib": round(e.gib(), 2),
            "limit_gib": report.limit_gib, "limit_source": report.limit_source}  # fmt: skip
