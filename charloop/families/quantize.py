"""Frozen denoiser weights in a reduced format (``train.memory.weights``).

- 'nf4': 4-bit NormalFloat (bitsandbytes). On CUDA the weights are quantized while loading
  (diffusers' ``BitsAndBytesConfig``, the QLoRA recipe); diffusers' bitsandbytes loader
  refuses a CPU, so there every ``nn.Linear`` is swapped for a ``bnb.nn.Linear4bit`` after
  loading (the same format: blocks of 64 with a float32 absmax).
- 'fp8': float8 weights with a scale per row, computed in the model's dtype (torchao's
  ``Float8WeightOnlyConfig`` through diffusers' ``TorchAoConfig``; works on CPU, slowly).

peft puts its LoRA layers on top of either (``bnb.nn.Linear4bit`` and torchao tensors are
dispatched to its own LoRA classes); the LoRA weights stay float32.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def quantization_config(weights: str, dtype: torch.dtype, device: torch.device) -> Any | None:
    """The diffusers ``quantization_config`` that loads the denoiser in ``weights``, or
    None (unquantized, or nf4 off CUDA: see :func:`quantize_nf4`)."""
    if weights == "fp8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    if weights == "nf4" and device.type == "cuda":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return None


def quantize_nf4(
    model: torch.nn.Module, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> int:
    """Swap every ``nn.Linear`` of ``model`` for an NF4 ``Linear4bit`` quantized on
    ``device`` (where it then lives); returns how many were swapped."""
    import bitsandbytes as bnb

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=dtype, quant_type="nf4", device="meta",
            )  # fmt: skip
            layer.weight = bnb.nn.Params4bit(
                child.weight.data.to(dtype), requires_grad=False, quant_type="nf4"
            )
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            setattr(parent, name, layer.to(device))  # .to quantizes
            swapped += 1
    logger.info("nf4: %d Linear layers quantized on %s", swapped, device)
    return swapped


def is_prequantized(model: Any) -> bool:
    """Whether diffusers loaded ``model`` through bitsandbytes (already on its GPU; it must
    not be moved with ``.to``)."""
    return bool(getattr(model, "is_loaded_in_4bit", False))
