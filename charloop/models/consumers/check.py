"""Would this LoRA file load, completely, in each tool artists use? A static checker.

Each rule is written from the consumer's published loading code (read, not imported):

- kohya sd-scripts @48d368fa (2026-02-16), ``networks/lora.py``: modules named
  ``lora_unet_*`` / ``lora_te_*`` after the diffusers module path; ``create_network_
  from_weights`` takes the stem before the first '.', dim from ``lora_down``, alpha from
  ``.alpha`` (default dim).
- ComfyUI @a125cd84 (2025-10-12), ``comfy/lora.py``: ``model_lora_keys_unet`` maps
  ``lora_unet_<diffusers path>`` and dotted ``unet.<path>`` keys, the latter only with
  attention projections renamed ``.processor.to_*`` (so peft's ``...attn1.to_q`` keys
  are not mapped); ``model_lora_keys_clip`` maps ``lora_te_text_model_encoder_layers_*``
  and ``text_encoder.text_model.encoder.layers.*`` (q/k/v/out_proj, mlp fc1/fc2); every
  key not consumed logs "lora key not loaded".
- Forge @b6cfd7fc (ComfyUI's maps): more than 12 unmatched keys and the LoRA is not
  applied at all. A1111 reads the same kohya names.
- InvokeAI 6.14.0a (@8e71a8a5), ``model_manager/configs/lora.py``: a LoRA when a key
  starts with ``lora_unet_``/``lora_te_``... or ends with ``lora_A.weight``...; the base
  from the token-vector length of kohya keys only (``lora_unet_*_attn2_to_k.lora_down``
  width, or ``lora_te_*_self_attn_*``): 768 sd-1, 1024 sd-2, 1280/2048 sdxl.
- diffusers: one key format per file (it picks the format from the first key); its
  kohya-FLUX reader (``lora_conversion_utils``) splits a single block's fused ``linear1``
  at FLUX.1's fixed widths.
- FLUX files are told by their key names (InvokeAI's and ComfyUI's FLUX formats):
  ``lora_unet_double_blocks_N_*`` / ``single_blocks_N_*`` (kohya, fused q/k/v) or
  ``transformer.transformer_blocks.N.*`` (diffusers/peft, which ComfyUI maps one to one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from charloop.families import get_family
from charloop.models.consumers.base_modules import BaseModules
from charloop.models.consumers.keys import Module, group_modules, shape_problem
from charloop.models.consumers.reader import AdapterFile

INVOKE_BASES = {768: "sd-1", 1024: "sd-2", 1280: "sdxl", 2048: "sdxl"}
_COMFY_CLIP = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
               "mlp.fc1", "mlp.fc2")  # fmt: skip
_FORGE_MAX_UNMATCHED = 12
FLUX1_LINEAR1_ROWS = 3 * 3072 + 12288
_FLUX_KEY = re.compile(
    r"^(lora_unet_(double|single)_blocks_\d+_|transformer\.(single_)?transformer_blocks\.\d+\.)"
)


@dataclass
class Verdict:
    """One consumer's verdict on a file."""

    consumer: str
    loads: bool
    detail: str
    problems: list[str] = field(default_factory=list)


def _summary(loaded: int, total: int, problems: list[str]) -> str:
    return f"{loaded}/{total} modules" + (f"; {problems[0]}" if problems else "")


def kohya_tools(kind: str, modules: dict[str, Module], base: BaseModules) -> Verdict:
    """sd-scripts (and A1111, which reads the same names)."""
    if kind != "kohya":
        return Verdict("kohya sd-scripts / A1111", False, f"not kohya keys ({kind} format)")
    problems = [p for m in modules.values() if (p := shape_problem(m, base))]
    ok = not problems and bool(modules)
    summary = _summary(len(modules) - len(problems), len(modules), problems)
    return Verdict("kohya sd-scripts / A1111", ok, summary, problems)


def _comfy_maps(module: Module) -> bool:
    if module.path is None:
        return False
    if module.stem.startswith("lora_"):
        if module.component == "unet":
            return True
        return module.path.startswith("encoder.layers.") and module.path.endswith(_COMFY_CLIP)
    if module.stem.startswith("transformer."):  # FLUX's diffusers keys: mapped one to one
        return True
    if module.component == "unet":  # dotted: attention projections only as .processor.to_*
        return not any(f".{p}" in module.path for p in ("to_q", "to_k", "to_v", "to_out"))
    return module.stem.startswith(
        ("text_encoder.text_model.encoder.layers.", "text_encoder_2.text_model.encoder.layers.")
    ) and module.path.endswith(_COMFY_CLIP)


def comfyui(modules: dict[str, Module], stray: list[str], base: BaseModules) -> list[Verdict]:
    """ComfyUI, and Forge (same maps, all-or-nothing past 12 unmatched keys)."""
    unmapped = [m for m in modules.values() if not _comfy_maps(m)]
    problems = [p for m in modules.values() if _comfy_maps(m) and (p := shape_problem(m, base))]
    issues = [f"lora key not loaded: {key}" for key in stray]
    issues += [f"lora key not loaded: {m.stem}.* ({len(m.parts)} keys)" for m in unmapped]
    issues += problems
    loaded = len(modules) - len(unmapped) - len(problems)
    summary = _summary(loaded, len(modules), issues)
    comfy = Verdict("ComfyUI", not issues and loaded > 0, summary, issues)
    unmatched_keys = len(stray) + sum(len(m.parts) for m in unmapped)
    if unmatched_keys > _FORGE_MAX_UNMATCHED or problems or loaded == 0:
        forge = Verdict("Forge", False, "LoRA version mismatch: not applied at all", issues)
    else:
        forge = Verdict("Forge", not issues, summary, issues)
    return [comfy, forge]


def invoke_base(modules: dict[str, Module]) -> int | None:
    """InvokeAI's ``lora_token_vector_length``: from kohya keys only (a UNet cross-attention
    key's input width, a ``lora_te_`` self-attention's, or ``lora_te1_`` + ``lora_te2_``)."""
    te1 = te2 = None
    for module in modules.values():
        down = module.parts.get("down")
        if down is None or not module.stem.startswith("lora_"):
            continue
        if module.stem.startswith("lora_unet_") and module.stem.endswith(
            ("attn2_to_k", "attn2_to_v")
        ):
            return down[1]
        if "_self_attn_" in module.stem:
            if module.stem.startswith("lora_te_"):
                return down[1]
            if module.stem.startswith("lora_te1_"):
                te1 = down[1]
            elif module.stem.startswith("lora_te2_"):
                te2 = down[1]
        if te1 is not None and te2 is not None:
            return te1 + te2
    return None


def invokeai(
    file: AdapterFile, modules: dict[str, Module], base: BaseModules, family: str
) -> Verdict:
    """InvokeAI's model probe: a LoRA, of the family's base, with every module resolvable."""
    keys = file.tensors
    prefixes = ("lora_te_", "lora_unet_", "lora_te1_", "lora_te2_", "lora_transformer_")
    suffixes = ("to_k_lora.up.weight", "to_q_lora.down.weight", "lora_A.weight", "lora_B.weight")
    if not any(k.startswith(prefixes) or k.endswith(suffixes) for k in keys):
        return Verdict("InvokeAI", False, "not recognised as a LoRA")
    length = invoke_base(modules)
    found = INVOKE_BASES.get(length or 0)
    if any(_FLUX_KEY.match(key) for key in keys):  # FLUX formats are told by their key names
        found = "flux"
    if found is None:
        return Verdict(
            "InvokeAI", False, f"unrecognized token vector length {length}: not importable"
        )
    expected = get_family(family).invoke_base
    if found != expected:
        return Verdict("InvokeAI", False, f"classified as {found}, expected {expected}")
    problems = [p for m in modules.values() if (p := shape_problem(m, base))]
    summary = _summary(len(modules) - len(problems), len(modules), problems)
    return Verdict("InvokeAI", not problems, f"base {found}; {summary}", problems)


def diffusers(kind: str, modules: dict[str, Module], base: BaseModules) -> Verdict:
    """diffusers ``load_lora_weights``: one format, every module in the base. Its kohya-FLUX
    reader splits a single block's ``linear1`` at FLUX.1's widths (3 x 3072 + 12288 rows)."""
    if kind not in ("kohya", "peft"):
        return Verdict("diffusers", False, f"{kind} key formats: only the first one's keys load")
    problems = [p for m in modules.values() if (p := shape_problem(m, base))]
    problems += [
        f"{m.stem}: diffusers splits linear1 at FLUX.1's widths (21504 rows), this has {up[0]}"
        for m in modules.values()
        if m.stem.startswith("lora_unet_single_blocks_") and m.stem.endswith("_linear1")
        and (up := m.parts.get("up")) is not None and up[0] != FLUX1_LINEAR1_ROWS
    ]
    summary = _summary(len(modules) - len(problems), len(modules), problems)
    return Verdict("diffusers", not problems and bool(modules), summary, problems)


def check_adapter(file: AdapterFile, base: BaseModules) -> list[Verdict]:
    """Every consumer's verdict on ``file`` for a base of layout ``base``."""
    shapes = {key: info.shape for key, info in file.tensors.items()}
    kind, modules, stray = group_modules(shapes, base)
    return [
        diffusers(kind, modules, base),
        kohya_tools(kind, modules, base),
        *comfyui(modules, stray, base),
        invokeai(file, modules, base, base.family),
    ]
