"""Build the world tagger (``models/world-tagger``): the loop's trait scorer on the world.

A multi-head CNN over the character attributes only (no context heads: a tagger of who is
drawn, not where), trained on renders and their reconstructions by every world base
model's VAE (each generated picture goes through one). It is deliberately its own model:
other characters, another seed, another width than the oracle's joint run, so the loop's
trait checks and the validity report's oracle never share weights or data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from charloop.models.world_tagger import TaggerNet, WorldTagger
from charloop_world.attributes import CHARACTER_VALUES, OUTFIT_COLOURS, OUTFIT_KINDS, phrase
from charloop_world.dataset import WorldDataset, cached_dataset
from charloop_world.nets import augment, images_to_tensor, save_model
from charloop_world.oracle_adapt import load_vae, reconstruct

logger = logging.getLogger(__name__)

WIDTH, FEATURES = 24, 192
SEED_OFFSET = 300
"""Data seeds 300+ (the oracle and embedder use 100-201): no render is shared."""


def vocabulary() -> tuple[dict[str, list[str]], dict[str, list[list[str]]]]:
    """The tag phrase of every character value, and the compound outfit phrases."""
    tags = {name: [phrase(name, v) for v in values] for name, values in CHARACTER_VALUES.items()}
    compounds = {
        f"{colour} {kind}": [["outfit_colour", colour], ["outfit_kind", kind]]
        for colour in OUTFIT_COLOURS
        for kind in OUTFIT_KINDS
    }
    return tags, compounds


def _vae_folders(models: Path) -> list[Path]:
    return [models / f for f in ("world-sd15", "world-sdxl", "world-flux") if (models / f).is_dir()]


def _pool(
    data: WorldDataset, vaes: list[Path], n_recon: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Renders plus ``n_recon`` reconstructions through each VAE: images and source index."""
    rng = np.random.default_rng(seed)
    images, index = [data.images], [np.arange(len(data))]
    for folder in vaes:
        pick = rng.choice(len(data), min(n_recon, len(data)), replace=False)
        images.append(reconstruct(load_vae(folder), data.images[pick]))
        index.append(pick)
        logger.info("tagger: %d reconstructions through %s", len(pick), folder.name)
    return np.concatenate(images), np.concatenate(index)


def accuracy(tagger: WorldTagger, images: list[Image.Image], records: list[dict]) -> dict:
    """Attribute -> fraction of images whose most likely value is the true one."""
    probs = tagger.probabilities(images)
    return {
        name: float(
            np.mean(
                [
                    tagger.net.attributes[name][int(i)] == r[name]
                    for i, r in zip(p.argmax(1), records, strict=True)
                ]
            )
        )
        for name, p in probs.items()
    }


def train_tagger(
    pool: np.ndarray, labels: dict[str, np.ndarray], minutes: float, seed: int
) -> tuple[TaggerNet, int]:
    """Cross-entropy per attribute, with the world nets' augmentation, for ``minutes``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = TaggerNet({n: list(v) for n, v in CHARACTER_VALUES.items()}, WIDTH, FEATURES)
    x = images_to_tensor(pool)
    y = {n: torch.from_numpy(v) for n, v in labels.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    start, step, budget = time.time(), 0, minutes * 60
    net.train()
    while time.time() - start < budget:
        progress = (time.time() - start) / budget
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = 3e-3 * warm * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress)))
        index = torch.from_numpy(rng.integers(0, len(x), 64))
        logits = net(augment(x[index], generator))
        loss = torch.stack([F.cross_entropy(logits[n], y[n][index]) for n in logits]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            logger.info("tagger step %d loss %.3f %.0fs", step, loss.item(), time.time() - start)
    return net.eval(), step


def build_tagger(
    out_dir: str | Path,
    cache_dir: str | Path = ".charloop/world-cache",
    minutes: float = 8.0,
    seed: int = 0,
    models: str | Path = "models",
) -> Path:
    """Render data, reconstruct it through the world VAEs in ``models``, train, measure
    held-out accuracy (clean and through each VAE) and save with a model card."""
    data = cached_dataset(cache_dir, 2000, 4, seed + SEED_OFFSET, workers=2)
    held = cached_dataset(cache_dir, 500, 1, seed + SEED_OFFSET + 1, workers=2)
    vaes = _vae_folders(Path(models))
    pool, source = _pool(data, vaes, 3000, seed)
    labels = {n: data.labels(n)[source] for n in CHARACTER_VALUES}
    net, steps = train_tagger(pool, labels, minutes, seed)
    tags, compounds = vocabulary()
    tagger = WorldTagger(net, tags, compounds)
    rows: dict[str, dict[str, float]] = {
        "clean": accuracy(tagger, [Image.fromarray(a) for a in held.images], held.records)
    }
    for folder in vaes:
        recon = reconstruct(load_vae(folder), held.images)
        rows[folder.name] = accuracy(tagger, [Image.fromarray(a) for a in recon], held.records)
    config = {
        "kind": "world-tagger",
        "attributes": net.attributes,
        "order": list(CHARACTER_VALUES),  # the JSON keys are sorted: keep the prompt order
        "width": WIDTH,
        "features": FEATURES,
        "tags": tags,
        "compounds": compounds,
        "accuracy": rows,
        "training": {"steps": steps, "minutes": minutes, "images": len(pool), "seed": seed},
    }
    out = save_model(net, config, out_dir)
    header = " | ".join(rows)
    table = "\n".join(
        f"| {n} | {len(v)} | " + " | ".join(f"{rows[k][n]:.3f}" for k in rows) + " |"
        for n, v in CHARACTER_VALUES.items()
    )
    (out / "MODEL_CARD.md").write_text(
        f"""# world-tagger

The loop's trait scorer on the procedural world: a CNN
({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, width {WIDTH}) with one
softmax head per character attribute; each value is a tag ("teal hair", "wearing a hat",
"slim body"; outfit colour and kind also combine: "pink jacket"). Load with
`charloop.models.world_tagger.load_world_tagger(path)`; params:
`traits: {{scorer: {{type: world, path: models/world-tagger}}}}`.

Trained {steps} steps (batch 64, {minutes:g} min on CPU) on {len(data)} renders of
{len(data) // 4} random characters (data seed {seed + SEED_OFFSET}) plus 3000 reconstructions
through each world VAE ({", ".join(f.name for f in vaes) or "none"}), with the world nets'
augmentation. Not the oracle: other characters, seed and width; the oracle only measures.
Rebuild: `charloop world build tagger`.

Held-out accuracy on {len(held)} fresh renders (most likely value), clean and read through
each VAE:

| attribute | values | {header} |
|---|---|{"---|" * len(rows)}
{table}
"""
    )
    logger.info("tagger accuracy %s", rows)
    return out
