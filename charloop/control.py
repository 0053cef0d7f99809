"""ControlNet conditioning: control maps from reference images, and the ControlNet pipeline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from charloop.hashing import sha256_bytes
from charloop.params import ControlNetParams
from charloop.references import load_references

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True)
class ControlMap:
    """One preprocessed control image and where it came from."""

    source: str
    sha256: str
    image: Image.Image


def control_maps(folder: Path, spec: ControlNetParams, resolution: int) -> list[ControlMap]:
    """Preprocess every readable image in ``folder`` into a control map (sorted by name).

    Raises:
        ValueError: no readable image in the folder.
    """
    from controlnet_aux.canny import CannyDetector

    refs = load_references(folder)
    if not refs.images:
        raise ValueError(f"generate.controlnet.images {folder} holds no readable image")
    detector = CannyDetector()
    maps = []
    for name, image in zip(refs.files, refs.images, strict=True):
        control = detector(
            image,
            low_threshold=spec.canny_low,
            high_threshold=spec.canny_high,
            detect_resolution=resolution,
            image_resolution=resolution,
        ).resize((resolution, resolution))
        maps.append(ControlMap(name, sha256_bytes(control.tobytes()), control))
    return maps


def controlnet_pipeline(base: Any, model_ref: str) -> Any:
    """A StableDiffusionControlNetPipeline sharing the base pipeline's loaded components."""
    key = (id(base), model_ref)
    if key not in _PIPELINES:
        from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

        logger.info("loading ControlNet %s", model_ref)
        controlnet = ControlNetModel.from_pretrained(model_ref, torch_dtype=base.unet.dtype)
        pipe = StableDiffusionControlNetPipeline(
            **{k: v for k, v in base.components.items() if k != "image_encoder"},
            controlnet=controlnet.to(base.device),
        )
        pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
        _PIPELINES[key] = pipe
    return _PIPELINES[key]
