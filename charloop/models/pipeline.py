"""Loading the base pipeline once per process, and applying a LoRA to it for a while."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from charloop.families import family_of_pipe
from charloop.models.trigger_embedding import load_into_pipe, unload_from_pipe
from charloop.params.schema import BaseModelSpec

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple[Any, ...], Any] = {}


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; explicit names are used as given."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere (CPU half precision is slow)."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def load_pipeline(model_ref: str, spec: BaseModelSpec, offload: str = "none") -> Any:
    """The family's text-to-image pipeline for ``model_ref``, loaded once per process.

    Args:
        model_ref: Hub id or local diffusers folder (already resolved to an absolute path).
        spec: Family, prediction, device, dtype and revision settings from params.
        offload: 'none', 'model' (one component at a time on the GPU) or 'sequential'
            (one layer at a time); CUDA only (``train.memory.pipeline_offload``).

    Raises:
        FamilyMismatch: the declared family or prediction type contradicts the folder.
    """
    from charloop.families.detect import resolve_base

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    offload = offload if device.type == "cuda" else "none"
    key = (model_ref, str(device), str(dtype), spec.revision, spec.family, spec.prediction,
           spec.zero_terminal_snr, offload)  # fmt: skip
    if key in _PIPELINES and offload == "none" and _PIPELINES[key].device.type != device.type:
        _PIPELINES[key].to(device)  # back from offload_pipeline
    if key not in _PIPELINES:
        if not Path(model_ref).exists() and model_ref.startswith((".", "/")):
            raise FileNotFoundError(f"base_model.path {model_ref} does not exist")
        base = resolve_base(spec, model_ref)
        logger.info("loading %s base model %s on %s (%s)", base.family.name, model_ref, device, dtype)
        pipe = base.family.pipeline_type().from_pretrained(
            model_ref, torch_dtype=dtype, revision=spec.revision, **base.family.load_kwargs()
        )
        overrides = base.scheduler_overrides(pipe.scheduler.config)
        if overrides:  # a v-prediction base whose config does not say so
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
        place(pipe, device, offload)
        pipe.set_progress_bar_config(disable=True)
        enable_memory_efficient_attention(pipe, device)
        _PIPELINES[key] = pipe
    return _PIPELINES[key]


def place(pipe: Any, device: torch.device, offload: str) -> None:
    """Put ``pipe`` on ``device``, or let diffusers move its parts there as they run."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if offload != "none":
        logger.info("pipeline offload: %s (diffusers CPU offload)", offload)


def offload_pipeline(pipe: Any, enabled: bool = True) -> None:
    """Move a pipeline that sits on a GPU to CPU memory and free the cache (the train
    stage once latents and prompts are cached: ``train.memory.offload_encoders``); a
    no-op on CPU and for pipelines diffusers already offloads."""
    if enabled and getattr(pipe, "_all_hooks", None):  # diffusers' model offload
        pipe.maybe_free_model_hooks()  # the last component used goes back to the CPU
        return
    device = pipe.device
    if not enabled or device.type != "cuda":
        logger.debug("offload after caching: nothing to do on %s", device.type)
        return
    pipe.to("cpu")
    torch.cuda.empty_cache()
    logger.info("train: base pipeline moved off %s after caching", device)


def enable_memory_efficient_attention(pipe: Any, device: torch.device) -> None:
    """xformers when installed on CUDA; otherwise diffusers' default PyTorch SDPA."""
    if device.type != "cuda":
        return
    try:
        import xformers  # noqa: F401

        pipe.enable_xformers_memory_efficient_attention()
        logger.info("attention: xformers")
    except Exception:  # ImportError, or an xformers build that does not match torch
        logger.info("attention: PyTorch scaled_dot_product_attention")


def clear_pipeline_cache() -> None:
    """Forget loaded pipelines (tests, or freeing memory between phases)."""
    _PIPELINES.clear()


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' notes below ERROR are silenced for the block (its logger, its handler)."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before)


@contextmanager
def lora_applied(
    pipe: Any,
    adapter_dir: str | Path | None,
    scale: float = 1.0,
    weight_name: str | None = None,
) -> Iterator[Any]:
    """Load a LoRA into the shared pipeline for the duration of the block, then remove it.

    With ``adapter_dir=None`` the block runs on the plain base model. ``weight_name``
    picks a file in the folder (e.g. the kohya export); default: the diffusers file.
    """
    if adapter_dir is None:
        yield pipe
        return
    name = "charloop_active"
    extra = {"weight_name": weight_name} if weight_name else {}
    with _quiet_diffusers():  # "No LoRA keys ... prefix='text_encoder'": a UNet-only LoRA
        pipe.load_lora_weights(str(adapter_dir), adapter_name=name, **extra)
    pipe.set_adapters([name], adapter_weights=[scale])
    family = family_of_pipe(pipe)
    embedded = load_into_pipe(pipe, family, Path(adapter_dir))  # pivotal tuning's tokens
    try:
        yield pipe
    finally:
        pipe.delete_adapters(name)
        if embedded:
            unload_from_pipe(pipe, family)
