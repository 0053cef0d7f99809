"""Helpers shared by the CLI's command groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from charloop.params.project import ParamsError, Project, load_project

console = Console(stderr=True, soft_wrap=True)  # error lines stay whole (grep-able)

EXIT_INVALID = 2
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Path to params.yaml.")]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "alembic", "dvc", "mlflow", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_or_exit(path: Path) -> Project:
    try:
        return load_project(path)
    except ParamsError as exc:
        console.print(f"[red]invalid params[/red] {exc.source}:")
        for problem in exc.problems:
            console.print(f"  - {problem}")
        raise typer.Exit(EXIT_INVALID) from None
