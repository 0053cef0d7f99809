"""Warm-start a world base build from a shipped world model (GPU sessions).

A fresh device machine has no checkpoint cache, so ``bench/gpu_world_build.sh`` would train
from scratch and throw away what an earlier session's build learned. This writes the build's
checkpoints (``vae.pt`` and ``diffusion.pt`` in the family's cache folder) from the weights in
``models/world-<family>``, with a fresh optimiser, step 0 and no elapsed time: the build then
"resumes" from them with a full budget of its own (warm-up and schedule start again). The
VAE is kept as it is, so its budget is skipped. Text encoders are re-keyed to today's
tokenizers (each token's embedding row moves to its id today).

A folder whose weights do not fit today's architecture is skipped with a message (the build
then starts from scratch for that family). An existing checkpoint is never overwritten.

Usage: ``python bench/seed_world_cache.py --cache .charloop/world-cache --family sdxl flux``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charloop_world.arch import ARCH_FAMILIES, get_arch  # noqa: E402
from charloop_world.build_base import cache_dir_of  # noqa: E402
from charloop_world.tokenizer import PROMPT_WORDS, WORLD_WORDS  # noqa: E402
from charloop_world.train_base import LoopLog, _checkpoint, _save_atomic, adamw  # noqa: E402


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    (file,) = sorted(folder.glob("*.safetensors"))
    return {k: v.float() for k, v in load_file(file).items()}


def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load strictly, except weights tied to a loaded one (T5's ``embed_tokens`` is its
    ``shared`` table, and safetensors stores it once)."""
    missing, unexpected = module.load_state_dict(weights, strict=False)
    state = module.state_dict()
    loaded = {state[k].data_ptr() for k in weights if k in state}
    untied = [k for k in missing if state[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise RuntimeError(f"missing {untied[:3]}, unexpected {unexpected[:3]}")


def _load_encoder(module: Any, weights: dict[str, torch.Tensor], source: Any, today: Any) -> None:
    """Load a text encoder whose tokenizer was ``source`` into one for ``today``'s tokenizer:
    each token's embedding row moves to that token's id today (world builds before the
    vocabulary was made deterministic numbered tied tokens differently run to run)."""
    table = module.get_input_embeddings().weight
    key = next(k for k, v in module.state_dict().items() if v.data_ptr() == table.data_ptr())
    rows = weights.pop(key)
    _load(module, {**weights, key: table.detach().clone()})
    old, new = source.get_vocab(), today.get_vocab()
    shared = [token for token in new if token in old]
    with torch.no_grad():
        table[[new[t] for t in shared]] = rows[[old[t] for t in shared]]
    # Intermediate merges may differ; every world word must still be one known token.
    lost = [w for w in dict.fromkeys(WORLD_WORDS + PROMPT_WORDS) if f"{w}</w>" in new
            and f"{w}</w>" not in old]  # fmt: skip
    if lost:
        raise RuntimeError(f"words the source never saw as one token: {lost[:5]}")


def seed(family: str, models: Path, cache: Path, lr: float) -> str:
    """Write ``family``'s warm-start checkpoints; returns what was done, in words."""
    arch = get_arch(family)
    source = models / arch.folder
    ckpts = cache_dir_of(cache, arch)
    if (ckpts / "diffusion.pt").exists() or (ckpts / "vae.pt").exists():
        return f"{family}: a checkpoint exists in {ckpts}; left as it is"
    if not (source / "build_stats.json").is_file():
        return f"{family}: no world model in {source}; from scratch"
    components = arch.new_components(0)
    try:
        _load(components["vae"], _weights(source / "vae"))
        modules = arch.trainable(components)
        _load(modules[arch.denoiser], _weights(source / arch.denoiser))
        for tok_name, enc_name in zip(arch.tokenizers, arch.text_encoders, strict=True):
            saved = type(components[tok_name]).from_pretrained(source / tok_name)
            weights = _weights(source / enc_name)
            _load_encoder(modules[enc_name], weights, saved, components[tok_name])
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        return f"{family}: {source} does not fit the architecture ({str(exc)[:200]}); from scratch"
    stats = json.loads((source / "build_stats.json").read_text())
    ckpts.mkdir(parents=True, exist_ok=True)
    vae_log = LoopLog(seconds=float(stats["vae_seconds"]), total_steps=int(stats["vae_steps"]))
    vae_state = {"vae": components["vae"].state_dict(), "log": vae_log.__dict__}
    _save_atomic(vae_state, ckpts / "vae.pt")  # the layout build_base's VAE step reads
    params = [p for module in modules.values() for p in module.parameters()]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ema = [p.detach().clone() for p in params]
    _checkpoint(
        ckpts / "diffusion.pt", modules, adamw(params, lr, 0.01, device), ema,
        step=0, elapsed=0.0, log_steps=[], log_losses=[],
    )  # fmt: skip
    return f"{family}: warm start from {source} ({stats['unet_steps']} earlier steps)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(".charloop/world-cache"))
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--family", nargs="+", default=["sdxl", "flux"], choices=ARCH_FAMILIES)
    parser.add_argument("--lr", type=float, default=6e-4)
    args = parser.parse_args()
    for family in args.family:
        print(seed(family, args.models, args.cache, args.lr), flush=True)


if __name__ == "__main__":
    main()
