"""The base model section of params.yaml: where the model is, its family and noise schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from charloop.params.base import StrictModel


class BaseModelSpec(StrictModel):
    """The text-to-image base model."""

    path: str = "models/tiny-sd15"
    """Hub id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5'), a local diffusers folder,
    or a single-file checkpoint (``.safetensors``/``.ckpt``, with ``family`` declared and
    ``config`` set). Relative local paths are resolved against the params file's folder."""
    config: str | None = None
    """For a single-file ``path``: a local diffusers folder (or hub id) of the same family
    whose configs describe the checkpoint's architecture; it is converted once into
    ``.charloop/converted/``."""
    family: Literal["auto", "sd15", "sdxl", "flux"] = "auto"
    """Architecture family: 'auto' reads the pipeline class from the model's
    ``model_index.json``; 'sd15' (SD1.x and fine-tunes) or 'sdxl' (SDXL 1.0 and its community
    bases: Pony, Illustrious, NoobAI) or 'flux' (FLUX.1 dev/schnell). A declared family the
    folder contradicts is an error."""
    prediction: Literal["auto", "epsilon", "v_prediction"] = "auto"
    """What the denoiser predicts: 'auto' takes the scheduler config's ``prediction_type``
    (epsilon when it says nothing); declare 'v_prediction' for v-prediction bases whose
    config does not say so. A declared type the scheduler config contradicts is an error."""
    zero_terminal_snr: bool | None = None
    """Rescale the noise schedule to zero terminal SNR (v-prediction bases such as NoobAI
    v-pred are trained so); null: the scheduler config's ``rescale_betas_zero_snr``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``path`` is a hub id."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to run: 'auto' picks CUDA, then MPS, then CPU."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights dtype for inference: 'auto' is float16 on CUDA and float32 elsewhere."""

    @model_validator(mode="after")
    def _terminal_snr_needs_v(self) -> BaseModelSpec:
        if self.zero_terminal_snr and self.prediction == "epsilon":
            raise ValueError(
                "base_model.zero_terminal_snr needs prediction 'v_prediction' (an epsilon "
                "model cannot predict pure noise at the last step); set prediction or drop it"
            )
        return self
