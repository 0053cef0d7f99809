"""Rendering scenes with a text-to-image pipeline: the jobs, the batches, the PNG bytes.

Shared by the generate stage (training candidates) and the evaluate stage (held-out
renders), so both draw a job the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from charloop.core.faults import failpoint
from charloop.core.progress import progress_bar
from charloop.families import family_of_pipe
from charloop.params.generate import GenerateParams


@dataclass(frozen=True)
class ImageJob:
    """One image to render: everything needed to regenerate it exactly."""

    id: str
    prompt: str
    negative_prompt: str
    seed: int
    context: dict[str, str]
    characters: tuple[str, ...] = ()
    """Names of the characters in the scene, in prompt order (left to right when laid out)."""
    aim: dict[str, Any] | None = None
    """The traits an aimed prompt names and why (:mod:`charloop.scenes.aim`)."""


def render(
    pipe: Any,
    jobs: list[ImageJob],
    gen: GenerateParams,
    controls: list[Image.Image] | None = None,
    conditioning: dict[str, Any] | None = None,
) -> list[Image.Image]:
    """Render jobs in batches of ``gen.batch_size``; each image gets its own seeded generator.

    Args:
        pipe: A text-to-image pipeline, or a ControlNet pipeline when ``controls`` is given.
        jobs: What to render.
        gen: Generation params.
        controls: One control map per job (ControlNet), or None.
        conditioning: Extra pipeline kwargs shared by every batch (IP-Adapter embeddings).
    """
    images: list[Image.Image] = []
    family = family_of_pipe(pipe)
    sampling = family.sampling_kwargs(pipe, gen.guidance_scale)
    starts = range(0, len(jobs), gen.batch_size)
    for start in progress_bar(starts, "generate", unit="batch"):
        batch = jobs[start : start + gen.batch_size]
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch]
        extra: dict[str, Any] = dict(conditioning or {}) | sampling
        if controls is not None and gen.controlnet is not None:
            extra[family.control_image_kwarg] = controls[start : start + gen.batch_size]
            extra["controlnet_conditioning_scale"] = gen.controlnet.conditioning_scale
        result = pipe(
            prompt=[job.prompt for job in batch],
            negative_prompt=[job.negative_prompt for job in batch],
            generator=generators,
            num_inference_steps=gen.num_inference_steps,
            height=gen.resolution,
            width=gen.resolution,
            **extra,
        )
        images.extend(result.images)
        failpoint("generate:after-first-batch")
    return images


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding without timestamps, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
