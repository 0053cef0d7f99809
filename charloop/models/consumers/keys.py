"""A LoRA file's keys grouped by module, in the two formats charloop writes and reads.

- kohya: ``<stem>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, the stem being
  ``lora_unet_<path, '.' -> '_'>`` or ``lora_te_text_model_<path>`` (sd-scripts
  ``networks/lora.py``: ``lora_name = prefix + "." + name + "." + child; replace(".", "_")``).
- peft/diffusers: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` and
  ``text_encoder.<path>...`` (diffusers ``save_lora_weights`` over peft state dicts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from charloop.families import ModelFamily, get_family
from charloop.models.consumers.base_modules import BaseModules

KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PEFT_KEY = re.compile(
    r"^(?P<component>unet|transformer|text_encoder|text_encoder_2)\.(?P<path>.+)"
    r"\.lora_(?P<p>A|B)\.weight$"
)


@dataclass
class Module:
    """One LoRA module: its key stem, component, base module path and tensor shapes."""

    stem: str
    component: str  # "unet" or "text_encoder"
    path: str | None  # the base module it adapts, None when the name matches none
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)  # down/up/alpha shapes


def kohya_names(base: BaseModules) -> dict[str, tuple[str, str]]:
    """kohya stem -> (component, module path) for every LoRA-able base module, named the
    way sd-scripts names them for the base's family."""
    family = get_family(base.family)
    if family.name == "flux":  # kohya files name the original (BFL) modules
        names = {f"lora_unet_{p.replace('.', '_')}": ("unet", p) for p in base.unet
                 if "transformer_blocks" not in p}  # the BFL names, not diffusers'  # fmt: skip
    else:
        names = {
            "lora_unet_" + family.kohya_unet_name(p, base.unet_config).replace(".", "_"): ("unet", p)
            for p in base.unet
            if _has_kohya_name(family, p, base.unet_config)
        }
    pairs = zip(family.trained_text_encoders(), family.kohya_text_prefixes, strict=True)
    for component, prefix in pairs:
        names |= {
            f"{prefix}_text_model_{p.replace('.', '_')}": (component, p)
            for p in base.table(component)
        }
    return names


def _has_kohya_name(family: ModelFamily, path: str, config: dict[str, object]) -> bool:
    try:
        family.kohya_unet_name(path, config)
    except ValueError:  # a module outside the blocks the original layout names
        return False
    return True


def _kohya_component(stem: str, base: BaseModules) -> str:
    """The component an unknown kohya stem claims by its prefix."""
    if stem.startswith("lora_unet_"):
        return "unet"
    family = get_family(base.family)
    pairs = zip(family.trained_text_encoders(), family.kohya_text_prefixes, strict=True)
    for component, prefix in pairs:
        if stem.startswith(prefix + "_"):
            return component
    return "text_encoder"


def group_modules(
    keys: dict[str, tuple[int, ...]], base: BaseModules
) -> tuple[str, dict[str, Module], list[str]]:
    """Group tensor keys into modules.

    Returns:
        The format ('kohya', 'peft', 'mixed' or 'unknown'), the modules by stem, and the
        keys that fit neither format.
    """
    known = kohya_names(base)
    modules: dict[str, Module] = {}
    stray: list[str] = []
    formats = set()
    for key, shape in keys.items():
        stem, _, part = key.partition(".")
        if stem.startswith(("lora_unet_", "lora_te")) and part in KOHYA_PARTS:
            component, path = known.get(stem, (_kohya_component(stem, base), None))
            module = modules.setdefault(stem, Module(stem, component, path))
            module.parts[KOHYA_PARTS[part]] = shape
            formats.add("kohya")
        elif match := PEFT_KEY.match(key):
            component, path = match["component"], match["path"].removeprefix("text_model.")
            stem = f"{component}.{match['path']}"
            component = "unet" if component == "transformer" else component  # the denoiser
            table = base.table(component)
            module = modules.setdefault(
                stem, Module(stem, component, path if path in table else None)
            )
            module.parts["down" if match["p"] == "A" else "up"] = shape
            formats.add("peft")
        else:
            stray.append(key)
    kind = formats.pop() if len(formats) == 1 else ("mixed" if formats else "unknown")
    return kind, modules, stray


def shape_problem(module: Module, base: BaseModules) -> str | None:
    """Why ``module``'s tensors cannot patch its base module (None when they can)."""
    down, up = module.parts.get("down"), module.parts.get("up")
    if down is None or up is None:
        return f"{module.stem}: {'lora_up' if up is None else 'lora_down'} is missing"
    if module.path is None:
        return f"{module.stem}: no module of that name in the base model"
    weight = base.table(module.component)[module.path]
    rank = down[0]
    if up[1] != rank or down[1] != weight[1] or up[0] != weight[0]:
        return f"{module.stem}: shapes {down}/{up} do not fit the base weight {weight}"
    alpha = module.parts.get("alpha")
    if alpha is not None and alpha not in ((), (1,)):
        return f"{module.stem}: alpha must be a scalar, got shape {alpha}"
    return None
