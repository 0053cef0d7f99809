"""Adapt the oracle to pictures that went through the base model's VAE.

Every generated picture is decoded by the world VAE, which blurs and shifts colours. The
oracle is fine-tuned on a mix of renders and their VAE reconstructions (labels are the
render's attributes), so it reads generations as well as renders.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from charloop_world.dataset import cached_dataset
from charloop_world.nets import augment, images_to_tensor, save_model
from charloop_world.oracle import WorldOracle, accuracy, load_oracle

logger = logging.getLogger(__name__)


def load_vae(path: str | Path) -> Any:
    """The VAE of a saved pipeline folder (``.../world-sd15``) or a ``vae.pt`` checkpoint."""
    from diffusers import AutoencoderKL

    source = Path(path)
    if source.suffix == ".pt":
        from charloop_world.base_model import build_vae

        vae = build_vae()
        vae.load_state_dict(torch.load(source, weights_only=True)["vae"])
    else:
        vae = AutoencoderKL.from_pretrained(str(source / "vae"), torch_dtype=torch.float32)
    return vae.float().eval()


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """uint8 renders -> uint8 VAE reconstructions (posterior mean)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i : i + batch_size])
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out.append(((recon + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def adapt_oracle(
    oracle_dir: str | Path,
    vae_source: str | Path,
    cache_dir: str | Path = ".charloop/world-cache",
    minutes: float = 3.0,
    n_images: int = 3000,
    lr: float = 5e-4,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Fine-tune the saved oracle in place; returns held-out accuracy before and after."""
    vae = load_vae(vae_source)
    oracle = load_oracle(oracle_dir)
    net = oracle.net
    data = cached_dataset(cache_dir, 2500, 4, seed + 100)
    held = cached_dataset(cache_dir, 600, 1, seed + 101)
    pick = np.random.default_rng(seed).choice(len(data), n_images, replace=False)
    renders = data.images[pick]
    recons = reconstruct(vae, renders)
    held_recon = [Image.fromarray(a) for a in reconstruct(vae, held.images)]
    held_clean = [Image.fromarray(a) for a in held.images]
    before = accuracy(oracle, held_recon, held.records)
    pool = images_to_tensor(np.concatenate([renders, recons]))
    labels = {n: torch.from_numpy(np.tile(data.labels(n)[pick], 2)) for n in net.attributes}
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        progress = (time.time() - start) / (minutes * 60)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * progress))
        index = torch.from_numpy(rng.integers(0, len(pool), 64))
        logits = net(augment(pool[index], generator))
        loss = torch.stack([F.cross_entropy(logits[n], labels[n][index]) for n in logits]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            logger.info("oracle adapt step %d loss %.3f", step, loss.item())
    net.eval()
    adapted = WorldOracle(net)
    result = {
        "vae_recon_before": before,
        "vae_recon_after": accuracy(adapted, held_recon, held.records),
        "clean_after": accuracy(adapted, held_clean, held.records),
    }
    folder = Path(oracle_dir)
    config = json.loads((folder / "config.json").read_text())
    config["adapted_to_vae"] = {"steps": step, "seconds": round(time.time() - start)}
    save_model(net, config, folder)
    rows = "\n".join(
        f"| {n} | {result['vae_recon_before'][n]:.3f} | {result['vae_recon_after'][n]:.3f} "
        f"| {result['clean_after'][n]:.3f} |"
        for n in net.attributes
    )
    card = folder / "MODEL_CARD.md"
    card.write_text(
        card.read_text().split("\n## Adapted to the world VAE")[0].rstrip()
        + f"""

## Adapted to the world VAE
Then fine-tuned {step} steps ({time.time() - start:.0f} s) on {n_images} renders plus their
reconstructions by the world-sd15 VAE (what every generated picture goes through).
Held-out accuracy on {len(held)} fresh renders, read through the VAE before and after, and
on the clean renders after (the accuracy the committed weights have):

| attribute | VAE recon, before | VAE recon, after | clean, after |
|---|---|---|---|
{rows}
"""
    )
    logger.info("oracle adaptation %s", result)
    return result
