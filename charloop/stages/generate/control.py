"""ControlNet conditioning: control maps from reference images, and the ControlNet pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from charloop.core.hashing import sha256_bytes
from charloop.params.schema import ControlNetParams
from charloop.scenes.references import load_references

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True)
class ControlMap:
    """One preprocessed control image and where it came from."""

    source: str
    sha256: str
    image: Image.Image


# Preprocessors whose controlnet-aux class loads weights with ``from_pretrained``.
_WEIGHTED = {
    "openpose": "OpenposeDetector",
    "hed": "HEDdetector",
    "lineart": "LineartDetector",
    "lineart_anime": "LineartAnimeDetector",
    "midas": "MidasDetector",
}


def preprocessor(spec: ControlNetParams, annotators_ref: str | None = None) -> Callable[..., Any]:
    """A function ``(image, resolution) -> control map`` for ``spec.preprocessor``."""
    import controlnet_aux

    if spec.preprocessor == "canny":
        canny = controlnet_aux.CannyDetector()
        return lambda image, size: canny(
            image,
            low_threshold=spec.canny_low,
            high_threshold=spec.canny_high,
            detect_resolution=size,
            image_resolution=size,
        )
    if spec.preprocessor == "lineart_standard":
        lineart = controlnet_aux.LineartStandardDetector()
        return lambda image, size: lineart(image, detect_resolution=size)
    ref = annotators_ref or spec.annotators
    try:
        detector = getattr(controlnet_aux, _WEIGHTED[spec.preprocessor]).from_pretrained(ref)
    except Exception as exc:  # hub unreachable, or a folder without the weights
        raise ValueError(
            f"generate.controlnet.preprocessor '{spec.preprocessor}' needs annotator weights; "
            f"could not load them from {ref!r} ({exc}). Set generate.controlnet.annotators to "
            "a folder holding them, or use 'canny' / 'lineart_standard' (no weights)"
        ) from exc
    return lambda image, size: detector(image, detect_resolution=size, image_resolution=size)


def control_maps(
    folder: Path, spec: ControlNetParams, resolution: int, annotators_ref: str | None = None
) -> list[ControlMap]:
    """Preprocess every readable image in ``folder`` into a control map (sorted by name).

    Raises:
        ValueError: no readable image in the folder, or missing annotator weights.
    """
    refs = load_references(folder)
    if not refs.images:
        raise ValueError(f"generate.controlnet.images {folder} holds no readable image")
    detect = preprocessor(spec, annotators_ref)
    # controlnet-aux rounds the detection size to a multiple of 64 (0 below 32 px).
    detect_size = max(64, resolution)
    maps = []
    for name, image in zip(refs.files, refs.images, strict=True):
        control = detect(image, detect_size).convert("RGB").resize((resolution, resolution))
        maps.append(ControlMap(name, sha256_bytes(control.tobytes()), control))
    return maps


def controlnet_pipeline(base: Any, model_ref: str) -> Any:
    """The family's ControlNet pipeline sharing the base pipeline's loaded components."""
    key = (id(base), model_ref)
    if key not in _PIPELINES:
        import inspect

        import diffusers

        from charloop.families import family_of_pipe

        family = family_of_pipe(base)
        logger.info("loading ControlNet %s", model_ref)
        model_class = getattr(diffusers, family.controlnet_model_class)
        controlnet = model_class.from_pretrained(model_ref, torch_dtype=base.dtype)
        pipeline_class = family.controlnet_pipeline_type()
        accepted = inspect.signature(pipeline_class.__init__).parameters
        components = {k: v for k, v in base.components.items() if k in accepted}
        components.pop("image_encoder", None)
        pipe = pipeline_class(**components, controlnet=controlnet.to(base.device))
        pipe.set_progress_bar_config(disable=True)
        _PIPELINES[key] = pipe
    return _PIPELINES[key]


def side_by_side(left: ControlMap, right: ControlMap, resolution: int) -> ControlMap:
    """A layout control map: ``left`` squeezed into the left half, ``right`` into the right."""
    half = resolution // 2
    canvas = Image.new("RGB", (resolution, resolution))
    canvas.paste(left.image.resize((half, resolution)), (0, 0))
    canvas.paste(right.image.resize((resolution - half, resolution)), (half, 0))
    return ControlMap(f"{left.source}|{right.source}", sha256_bytes(canvas.tobytes()), canvas)


def job_control(maps: list[ControlMap], job: Any, layout: str, resolution: int) -> ControlMap:
    """The control map of one image job, chosen by its seed.

    A two-character scene laid out side by side gets one map per character, composed into
    halves, so ControlNet poses each character in its own half.
    """
    from charloop.scenes.prompts import derive_seed

    first = maps[derive_seed("control", job.seed) % len(maps)]
    if layout != "side_by_side" or len(job.characters) != 2:
        return first
    second = maps[derive_seed("control", job.seed, "right") % len(maps)]
    return side_by_side(first, second, resolution)
