"""Optional model captions: a vision-language model describes each kept image.

The description is appended after the structured tags, so the trigger stays first and
the context tags stay exact; the model only adds what the template cannot know.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

import torch
from PIL import Image

from charloop.params.schema import VlmCaptioner

logger = logging.getLogger(__name__)


class VlmBackend:
    """A transformers image-to-text model and its processor (BLIP, GIT, Florence...)."""

    def __init__(self, spec: VlmCaptioner, model_ref: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec = spec
        self.processor = AutoProcessor.from_pretrained(model_ref)
        self.model = AutoModelForImageTextToText.from_pretrained(model_ref).eval()

    @torch.no_grad()
    def describe(self, images: list[Image.Image]) -> list[str]:
        """One cleaned description per image, decoded greedily (deterministic)."""
        out: list[str] = []
        for start in range(0, len(images), self.spec.batch_size):
            batch = images[start : start + self.spec.batch_size]
            kwargs: dict[str, Any] = {"images": batch, "return_tensors": "pt"}
            if self.spec.prompt:
                kwargs["text"] = [self.spec.prompt] * len(batch)
            inputs = self.processor(**kwargs)
            tokens = self.model.generate(
                **inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False
            )
            texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
            out.extend(clean_description(t, self.spec.prompt) for t in texts)
        return out


def clean_description(text: str, prompt: str | None) -> str:
    """Drop an echoed prompt prefix, commas (they would split tags) and extra spaces."""
    text = text.strip()
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :]
    return re.sub(r"\s+", " ", text.replace(",", " ")).strip()


@lru_cache(maxsize=2)
def load_captioner(spec: VlmCaptioner, model_ref: str) -> VlmBackend:
    """The captioner for ``model_ref``, loaded once per process."""
    logger.info("loading captioner %s", model_ref)
    return VlmBackend(spec, model_ref)
