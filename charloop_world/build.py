"""Build entry point: ``python -m charloop_world.build base|embedder|oracle|all --out models``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TARGETS = ("oracle", "embedder", "base", "tagger")
FOLDERS = {
    "base": "world-sd15",
    "embedder": "world-embedder",
    "oracle": "world-oracle",
    "tagger": "world-tagger",
}


def build(
    target: str,
    out: str | Path = "models",
    cache: str | Path = ".charloop/world-cache",
    minutes: float | None = None,
    seed: int = 0,
    vae_minutes: float | None = None,
    base_options: dict[str, Any] | None = None,
    family: str = "sd15",
) -> list[Path]:
    """Build one model (or ``all``) under ``out``; returns the written folders.

    Args:
        target: ``base``, ``embedder``, ``oracle``, ``tagger`` (the loop's trait scorer),
            ``oracle-adapt`` (fine-tune the oracle on VAE reconstructions), ``quality``
            (measure the base model with the oracle and update its model card) or ``all``
            (all of them in that order).
        out: Models folder.
        cache: Where rendered datasets and training checkpoints are kept.
        minutes: Training budget override (for the base model: the UNet budget).
        vae_minutes: VAE training budget override (base model only).
        seed: Seed of data and initialisation.
        base_options: Base model only: ``device``, ``batch_size``, ``lr``, ``workers``
            (:class:`~charloop_world.train_base.DiffusionSetup` fields), ``n_characters``
            and ``vae_batch_size``.
        family: The base model's family (``sd15``, ``sdxl``, ``flux``): which
            ``models/world-<family>`` ``base`` builds and ``quality`` measures.

    Raises:
        ValueError: an unknown family or target (before anything is written).
    """
    from charloop_world.arch import get_arch

    base_folder = Path(out) / get_arch(family).folder
    if target not in (*TARGETS, "oracle-adapt", "quality", "all"):
        raise ValueError(f"unknown target {target!r}")
    targets = (*TARGETS, "oracle-adapt", "quality") if target == "all" else (target,)
    written = []
    for name in targets:
        if name == "oracle-adapt":
            from charloop_world.oracle_adapt import adapt_oracle

            base = Path(out) / FOLDERS["base"]  # the oracle adapts to the SD1.5 VAE
            vae = base if (base / "vae").exists() else Path(cache) / "vae.pt"
            adapt_oracle(Path(out) / FOLDERS["oracle"], vae, cache, seed=seed)
            written.append(Path(out) / FOLDERS["oracle"])
            continue
        if name == "quality":
            from charloop_world.quality import update_card

            update_card(base_folder, Path(out) / FOLDERS["oracle"], seed=seed)
            written.append(base_folder)
            continue
        folder = Path(out) / FOLDERS[name]
        if name == "base":
            written.append(
                _build_base(base_folder, cache, minutes, seed, vae_minutes, base_options, family)
            )
        elif name == "tagger":
            from charloop_world.tagger import build_tagger

            kwargs = {} if minutes is None else {"minutes": minutes}
            written.append(build_tagger(folder, cache, seed=seed, models=out, **kwargs))
        elif name == "embedder":
            from charloop_world.embedder import build_embedder

            kwargs = {} if minutes is None else {"minutes": minutes}
            written.append(build_embedder(folder, cache, seed=seed, **kwargs))
        else:
            from charloop_world.oracle import build_oracle

            kwargs = {} if minutes is None else {"minutes": minutes}
            written.append(build_oracle(folder, cache, seed=seed, **kwargs))
    return written


def _build_base(
    folder: Path,
    cache: str | Path,
    minutes: float | None,
    seed: int,
    vae_minutes: float | None,
    options: dict[str, Any] | None,
    family: str,
) -> Path:
    from charloop_world.build_base import build_base
    from charloop_world.train_base import DiffusionSetup

    options = {k: v for k, v in (options or {}).items() if v is not None}
    top: dict[str, Any] = {
        k: options.pop(k) for k in ("n_characters", "vae_batch_size") if k in options
    }
    kwargs: dict[str, Any] = {**top, "setup": DiffusionSetup(seed=seed, **options)}
    if minutes is not None:
        kwargs["unet_minutes"] = minutes
    if vae_minutes is not None:
        kwargs["vae_minutes"] = vae_minutes
    return build_base(folder, cache, seed=seed, family=family, **kwargs)


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
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl", "flux"))
    base = parser.add_argument_group("base model")
    base.add_argument("--device", default=None, help="cpu (default) or cuda")
    base.add_argument("--batch-size", type=int, default=None, help="UNet batch (32)")
    base.add_argument("--vae-batch-size", type=int, default=None, help="VAE batch (32)")
    base.add_argument("--lr", type=float, default=None, help="UNet peak learning rate (4e-4)")
    base.add_argument("--characters", type=int, default=None, help="characters rendered (6000)")
    base.add_argument("--workers", type=int, default=None, help="render/caption processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {
        "device": args.device,
        "batch_size": args.batch_size,
        "vae_batch_size": args.vae_batch_size,
        "lr": args.lr,
        "n_characters": args.characters,
        "workers": args.workers,
    }
    paths = build(
        args.target,
        args.out,
        args.cache,
        args.minutes,
        args.seed,
        args.vae_minutes,
        options,
        args.family,
    )
    for path in paths:
        logger.info("built %s", path)


if __name__ == "__main__":
    main()
