"""Build entry point: ``python -m charloop.world.build base|embedder|oracle|all --out models``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TARGETS = ("oracle", "embedder", "base")
FOLDERS = {"base": "world-sd15", "embedder": "world-embedder", "oracle": "world-oracle"}


def build(
    target: str,
    out: str | Path = "models",
    cache: str | Path = ".charloop/world-cache",
    minutes: float | None = None,
    seed: int = 0,
    vae_minutes: float | None = None,
) -> list[Path]:
    """Build one model (or ``all``) under ``out``; returns the written folders.

    Args:
        target: ``base``, ``embedder``, ``oracle``, ``oracle-adapt`` (fine-tune the oracle on
            VAE reconstructions), ``quality`` (measure the base model with the oracle and
            update its model card) or ``all`` (all of them in that order).
        out: Models folder.
        cache: Where rendered datasets and training checkpoints are kept.
        minutes: Training budget override (for the base model: the UNet budget).
        vae_minutes: VAE training budget override (base model only).
        seed: Seed of data and initialisation.
    """
    targets = (*TARGETS, "oracle-adapt", "quality") if target == "all" else (target,)
    written = []
    for name in targets:
        if name == "oracle-adapt":
            from charloop.world.oracle_adapt import adapt_oracle

            base = Path(out) / FOLDERS["base"]
            vae = base if (base / "vae").exists() else Path(cache) / "vae.pt"
            adapt_oracle(Path(out) / FOLDERS["oracle"], vae, cache, seed=seed)
            written.append(Path(out) / FOLDERS["oracle"])
            continue
        if name == "quality":
            from charloop.world.quality import update_card

            base = Path(out) / FOLDERS["base"]
            update_card(base, Path(out) / FOLDERS["oracle"], seed=seed)
            written.append(base)
            continue
        folder = Path(out) / FOLDERS[name]
        if name == "base":
            from charloop.world.build_base import build_base

            kwargs: dict[str, float] = {} if minutes is None else {"unet_minutes": minutes}
            if vae_minutes is not None:
                kwargs["vae_minutes"] = vae_minutes
            written.append(build_base(folder, cache, seed=seed, **kwargs))  # type: ignore[arg-type]
        elif name == "embedder":
            from charloop.world.embedder import build_embedder

            kwargs = {} if minutes is None else {"minutes": minutes}
            written.append(build_embedder(folder, cache, seed=seed, **kwargs))
        else:
            from charloop.world.oracle import build_oracle

            kwargs = {} if minutes is None else {"minutes": minutes}
            written.append(build_oracle(folder, cache, seed=seed, **kwargs))
    return written


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", choices=(*TARGETS, "oracle-adapt", "quality", "all"))
    parser.add_argument("--out", default="models")
    parser.add_argument("--cache", default=".charloop/world-cache")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for path in build(args.target, args.out, args.cache, args.minutes, args.seed, args.vae_minutes):
        logger.info("built %s", path)


if __name__ == "__main__":
    main()
