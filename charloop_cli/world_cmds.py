"""``charloop world build|references``: the procedural character world and its models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charloop_cli.common import EXIT_INVALID, fail, load_or_exit, say, setup_logging

world_app = typer.Typer(help="Procedural character world: build its models, render references.")

TARGETS = ("base", "embedder", "oracle", "tagger", "oracle-adapt", "quality", "all")
TARGET_HELP = "base, embedder, oracle, tagger, oracle-adapt, quality or all."


@world_app.command()
def build(
    target: Annotated[str, typer.Argument(help=TARGET_HELP)] = "all",
    out: Annotated[Path, typer.Option(help="Models folder.")] = Path("models"),
    cache: Annotated[Path, typer.Option(help="Rendered data and checkpoints.")] = Path(
        ".charloop/world-cache"
    ),
    minutes: Annotated[float | None, typer.Option(help="Training budget override.")] = None,
    vae_minutes: Annotated[float | None, typer.Option(help="Base model: VAE budget.")] = None,
    device: Annotated[str | None, typer.Option(help="Base model: cpu (default) or cuda.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Base model: UNet batch (32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Base model: UNet peak rate (4e-4).")] = None,
    characters: Annotated[int | None, typer.Option(help="Base model: characters (6000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Render/caption processes.")] = None,
    family: Annotated[
        str, typer.Option(help="Base model (and quality): sd15, sdxl or flux.")
    ] = "sd15",
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Train a world model (or all three) and save it under OUT with its model card.

    ``base --family sdxl|flux`` builds models/world-sdxl or models/world-flux (the same
    world, that family's diffusers classes). Budgets count the time of earlier runs: a
    build resumes from its checkpoint in CACHE. On a GPU: ``--device cuda --batch-size 256
    --lr 6e-4 --characters 40000 --workers 12``.
    """
    from charloop_world.arch import ARCH_FAMILIES
    from charloop_world.build import build as build_models

    if target not in TARGETS:
        fail("unknown target", repr(target), EXIT_INVALID, f"choose from {', '.join(TARGETS)}")
    if family not in ARCH_FAMILIES:
        fail("unknown --family", repr(family), EXIT_INVALID,
             f"choose from {', '.join(ARCH_FAMILIES)}")  # fmt: skip
    setup_logging(verbose)
    options = {
        "device": device,
        "batch_size": batch_size,
        "lr": lr,
        "n_characters": characters,
        "workers": workers,
    }
    for path in build_models(target, out, cache, minutes, seed, vae_minutes, options, family):
        say(f"built {path}")


@world_app.command()
def references(
    out_dir: Annotated[Path, typer.Argument(help="Where to write ref_NNN.png files.")],
    n: Annotated[int, typer.Option(help="Number of renders.", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the character and the contexts.")] = 0,
    character: Annotated[
        str | None,
        typer.Option(help="Attributes as key=value,... (missing ones are drawn from the seed)."),
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            "-p",
            help="Its evaluate.contexts' held-out values are never drawn "
            "(default: ./params.yaml when there is one).",
        ),
    ] = None,
) -> None:
    """Render N reference pictures of one world character over varied contexts, with
    caption sidecars and identity.json; the held-out values of the params' evaluation
    (when the params file exists) never appear in them."""
    import numpy as np

    from charloop_world.attributes import CHARACTER_VALUES, CharacterSpec, sample_character
    from charloop_world.captions import render_references

    spec = sample_character(np.random.default_rng(seed)).as_dict()
    for item in filter(None, (character or "").split(",")):
        key, _, value = item.partition("=")
        spec[key.strip()] = value.strip()
    unknown = set(spec) - set(CHARACTER_VALUES)
    if unknown:
        fail("unknown attributes", str(sorted(unknown)), EXIT_INVALID,
             f"known: {', '.join(CHARACTER_VALUES)}")  # fmt: skip
    try:
        chosen = CharacterSpec(**spec)
    except ValueError as exc:
        fail("invalid character", str(exc), EXIT_INVALID)
    if params is not None and not params.is_file():
        fail("no params file", f"{params} does not exist", EXIT_INVALID,
             "name the params.yaml whose evaluation the references must stay out of")  # fmt: skip
    params = params or Path("params.yaml")
    avoid = _held_out_values(params)
    try:
        paths = render_references(chosen, out_dir, n, seed, avoid)
    except ValueError as exc:
        fail("cannot render references", str(exc), EXIT_INVALID, "declare evaluate.seen_axes")
    say(f"wrote {len(paths)} references of {chosen.key} and identity.json to {out_dir}")
    if avoid:
        say(f"held-out values never drawn (from {params}): {', '.join(avoid)}")
    elif not params.is_file():
        say(f"no {params}: contexts drawn from every world value (pass --params to hold out "
            "an evaluation's contexts)")  # fmt: skip


def _held_out_values(params: Path) -> list[str]:
    """The values ``params``' evaluation claims unseen (none when the file is absent)."""
    if not params.is_file():
        return []
    from charloop.scenes.heldout import claimed_unseen_values

    return claimed_unseen_values(load_or_exit(params).params)
