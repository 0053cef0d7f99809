"""Generation settings of params.yaml: prompts, batching, ControlNet and IP-Adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from charloop.params.base import StrictModel


class ControlNetParams(StrictModel):
    """ControlNet conditioning for pose and expression variety."""

    model: str
    """Hub id (e.g. 'lllyasviel/control_v11p_sd15_canny') or local ControlNetModel folder."""
    images: str
    """Folder of pose/expression reference images; each job gets one, deterministically."""
    preprocessor: Literal[
        "canny", "lineart_standard", "openpose", "hed", "lineart", "lineart_anime", "midas"
    ] = "canny"
    """controlnet-aux preprocessor that turns references into control maps: 'canny' and
    'lineart_standard' need no weights; the others load theirs from ``annotators``."""
    annotators: str = "lllyasviel/Annotators"
    """Hub id or local folder with the controlnet-aux annotator weights (openpose, hed,
    lineart, lineart_anime, midas)."""
    conditioning_scale: float = Field(default=1.0, ge=0)
    """How strongly the control map steers generation."""
    canny_low: int = Field(default=100, ge=0, le=255)
    """Canny lower hysteresis threshold."""
    canny_high: int = Field(default=200, ge=0, le=255)
    """Canny upper hysteresis threshold."""


class IPAdapterParams(StrictModel):
    """Identity conditioning from the character's reference images through an IP-Adapter.

    The reference images (``character.references``) are embedded once with the adapter's
    CLIP image encoder; their mean embedding conditions every generated image.
    """

    model: str
    """Hub id (e.g. 'h94/IP-Adapter') or local folder holding the adapter weights."""
    weight_name: str = "ip-adapter_sd15.safetensors"
    """Weights file inside ``model``/``subfolder``."""
    subfolder: str = "models"
    """Subfolder of ``model`` that holds the weights file and the 'image_encoder' folder."""
    scale: float = Field(default=0.6, ge=0)
    """How strongly the reference identity steers generation (0 turns it off)."""


class GenerateParams(StrictModel):
    """Synthetic image generation."""

    prompt_template: str = "{trigger}, {traits}, {style}, {setting}, {attire}, {expression}, {pose}"
    """Prompt template; placeholders: {trigger} {traits} {description} and the context axes."""
    negative_prompt: str = "blurry, lowres, deformed, extra limbs, watermark, text"
    """Negative prompt for every image."""
    images_per_prompt: int = Field(default=2, ge=1)
    """Images per context combination, each with its own derived seed."""
    max_prompts: int | None = Field(default=None, ge=1)
    """Cap on context combinations; a capped subset still covers every value of every axis."""
    batch_size: int = Field(default=8, ge=1)
    """Images per pipeline call."""
    resolution: int = Field(default=64, ge=32, multiple_of=8)
    """Square image size in pixels (512 for SD1.5 checkpoints)."""
    num_inference_steps: int = Field(default=8, ge=1)
    """Denoising steps per image."""
    guidance_scale: float = Field(default=5.0, ge=0)
    """Classifier-free guidance scale."""
    lora_scale: float = Field(default=1.0, ge=0)
    """Strength of the previous iteration's LoRA when regenerating (iteration 2 on)."""
    seed: int = 0
    """Root seed; every image's seed derives from it, the iteration and the prompt."""
    controlnet: ControlNetParams | None = None
    """Optional ControlNet conditioning (null: plain text-to-image)."""
    ip_adapter: IPAdapterParams | None = None
    """Optional IP-Adapter identity conditioning from ``character.references`` (null: off)."""
