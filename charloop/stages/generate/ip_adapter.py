"""Identity conditioning: an IP-Adapter steers generation toward the reference images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from charloop.models.pipeline import enable_memory_efficient_attention
from charloop.params.schema import IPAdapterParams

logger = logging.getLogger(__name__)


def reference_embeds(pipe: Any, references: list[Image.Image]) -> torch.Tensor:
    """The mean IP-Adapter image embedding of the references, ready for the pipeline.

    Averaging the references' embeddings conditions every image on the identity they
    share rather than on one picture's pose or background.

    Returns:
        A ``(2, 1, dim)`` tensor: unconditional (zeros) then conditional, the layout the
        pipelines' ``ip_adapter_image_embeds`` expects with classifier-free guidance.
    """
    cond, _uncond = pipe.encode_image(references, pipe.device, 1)
    mean = cond.mean(dim=0, keepdim=True)
    return torch.cat([torch.zeros_like(mean), mean])[:, None, :]


@contextmanager
def ip_adapter_applied(
    pipe: Any,
    spec: IPAdapterParams | None,
    model_ref: str | None,
    references: list[Image.Image],
) -> Iterator[dict[str, Any]]:
    """Load the IP-Adapter into the shared pipeline for the block; yield the call kwargs.

    With ``spec=None`` nothing is loaded and the kwargs are empty. On exit the adapter
    and its image encoder are removed, so later stages see the plain base model.

    Raises:
        ValueError: identity conditioning without any readable reference image.
    """
    if spec is None or model_ref is None:
        yield {}
        return
    if not references:
        raise ValueError(
            "generate.ip_adapter needs at least one readable image in character.references"
        )
    logger.info("IP-Adapter %s (scale %.2f, %d references)", model_ref, spec.scale, len(references))
    pipe.load_ip_adapter(model_ref, subfolder=spec.subfolder, weight_name=spec.weight_name)
    try:
        pipe.set_ip_adapter_scale(spec.scale)
        with torch.no_grad():
            embeds = reference_embeds(pipe, references).to(pipe.unet.dtype)
        yield {"ip_adapter_image_embeds": [embeds]}
    finally:
        pipe.unload_ip_adapter()
        # Unloading restores default attention processors: put xformers back on CUDA.
        enable_memory_efficient_attention(pipe, pipe.device)
