"""SAI model-spec header keys, so tools that read them know what an adapter is.

Keys and values follow kohya sd-scripts' ``library/sai_model_spec.py`` (@48d368fa):
``modelspec.sai_model_spec`` 1.0.1, ``architecture`` '<base>/lora', ``implementation``,
``title``, ``resolution`` 'WxH', and the optional ``trigger_phrase`` and
``prediction_type`` ('epsilon' or 'v'). A1111 tells SD1 from SD2/SDXL by
``ss_base_model_version`` ('sd_v1', or 'sd_v1_v' for v-prediction). No date is written,
so a retrained adapter stays byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEC_VERSION = "1.0.1"


@dataclass(frozen=True)
class BaseSpec:
    """What the header says of the base an adapter was trained on."""

    resolution: int
    prediction_type: str = "epsilon"  # the scheduler's: 'epsilon' or 'v_prediction'
    architecture: str = "stable-diffusion-v1/lora"
    implementation: str = "diffusers"
    base_version: str = "sd_v1"


def spec_keys(spec: BaseSpec, title: str, trigger: str) -> dict[str, str]:
    """The header entries of an adapter named ``title`` with activation text ``trigger``."""
    v_pred = spec.prediction_type == "v_prediction"
    keys = {
        "modelspec.sai_model_spec": SPEC_VERSION,
        "modelspec.architecture": spec.architecture,
        "modelspec.implementation": spec.implementation,
        "modelspec.title": title,
        "modelspec.trigger_phrase": trigger,
        "modelspec.resolution": f"{spec.resolution}x{spec.resolution}",
        "modelspec.prediction_type": "v" if v_pred else "epsilon",
        "modelspec.description": f"charloop character LoRA; prompt with '{trigger}'",
        # sd-scripts marks v-prediction in the SD1/SD2 version string only ('sd_v1_v').
        "ss_base_model_version": spec.base_version
        + ("_v" if v_pred and spec.base_version.startswith("sd_v") else ""),
    }
    if spec.prediction_type == "flow":  # flow matching: sd-scripts writes no prediction type
        del keys["modelspec.prediction_type"]
    return keys
