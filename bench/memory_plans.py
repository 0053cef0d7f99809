"""The memory plans the GPU checks loop over (``--plan``), and the planner's estimate
beside each measurement.

A plan's denoiser is built at random in bf16 on the device, then its Linear weights are
quantized in place as ``train.memory.weights`` would load them (nf4: bitsandbytes
``Linear4bit``; fp8: torchao's float8 weight-only), the cache is emptied and the peak
statistics reset, so ``torch.cuda.max_memory_allocated`` counts the training step only.
The planner's total includes the CUDA context and workspace, which
``max_memory_allocated`` does not see: the error is computed without them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from charloop.families.quantize import quantize_nf4
from charloop.models.memory_plan import CUDA_CONTEXT_GIB, CUDA_WORKSPACE_GIB, Plan, Workload
from charloop.models.memory_plan import estimate as plan_estimate
from charloop.models.memory_sizes import denoiser_size

PLANS: dict[str, Plan] = {
    f"{'bf16' if w == 'unquantized' else w}/{o}": Plan(w, o, True)
    for w in ("unquantized", "fp8", "nf4")
    for o in ("adamw", "adamw8bit")
}
"""Every weight format x optimizer, with gradient checkpointing (1024 px needs it)."""


def selected(names: list[str] | None) -> dict[str, Plan]:
    """The plans ``--plan`` names (all of them for a bare ``--plan``)."""
    if not names:
        return PLANS
    unknown = sorted(set(names) - set(PLANS))
    if unknown:
        raise SystemExit(f"unknown plans {unknown}; known: {sorted(PLANS)}")
    return {name: PLANS[name] for name in names}


def quantize(model: torch.nn.Module, weights: str, device: torch.device) -> None:
    """Quantize ``model``'s Linear weights in place per ``weights``."""
    if weights == "nf4":  # computes in the model's dtype
        quantize_nf4(model, next(model.parameters()).dtype, device)
    elif weights == "fp8":
        from torchao.quantization import Float8WeightOnlyConfig, quantize_

        quantize_(model, Float8WeightOnlyConfig())
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def optimizer(params: list[torch.nn.Parameter], plan: Plan, lr: float) -> torch.optim.Optimizer:
    """The plan's optimizer (what ``train.memory.optimizer`` makes)."""
    if plan.optimizer == "adamw8bit":
        from bitsandbytes.optim import AdamW8bit

        return AdamW8bit(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def beside_estimate(
    row: dict[str, Any],
    family: str,
    config: dict[str, Any],
    plan: Plan,
    resolution: int,
    text_tokens: int | None = None,
    targets: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """``row`` with the planner's estimate for the same run and its error (%)."""
    from charloop.families import get_family

    work = Workload(
        denoiser_size(family, config), resolution, int(row["batch"]), 16,
        targets or get_family(family).default_targets, compute_bytes=2, cuda=True,
        text_tokens=text_tokens,
    )  # fmt: skip
    value = plan_estimate(work, plan)
    allocated = value.gib() - CUDA_CONTEXT_GIB - CUDA_WORKSPACE_GIB
    row["estimate_gib"] = round(value.gib(), 2)
    row["estimate_allocated_gib"] = round(allocated, 2)
    measured = float(row.get("peak_gib") or 0)
    row["estimate_error_pct"] = (
        round(100 * (allocated - measured) / measured, 1) if measured else None
    )
    return row


def run_plans(
    names: list[str] | None,
    run: Callable[[str, Plan], dict[str, Any]],
    estimate_row: Callable[[dict[str, Any], Plan], dict[str, Any]],
    key: str,
    tiny: bool,
    out: Path | None,
) -> list[dict[str, Any]]:
    """For each plan, ``run('charloop' | 'reference', plan)``; each row printed as it comes
    (an OOM is a result too), with the planner's estimate; all of them to ``out``."""
    rows = []
    for name, plan in selected(names).items():
        for trainer in ("charloop", "reference"):
            try:
                row = estimate_row(run(trainer, plan), plan)
            except Exception as exc:
                row = {"trainer": trainer, "plan": name, "error": str(exc)[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    device = "cpu" if tiny else torch.cuda.get_device_name(0)
    if out is not None:
        out.write_text(json.dumps({"device": device, "torch": torch.__version__, key: rows}))
    return rows
