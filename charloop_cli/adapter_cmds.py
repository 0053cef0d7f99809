"""``charloop check-adapter``: would a LoRA file load in diffusers, kohya, ComfyUI, InvokeAI?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charloop_cli.common import EXIT_INVALID, EXIT_REFUSED, fail, fail_with


def check_adapter(
    file: Annotated[Path, typer.Argument(help="A LoRA .safetensors file.")],
    base: Annotated[
        str,
        typer.Option(
            help="'sd15' or 'sdxl' (the reference layouts) or a local diffusers pipeline folder."
        ),
    ] = "sd15",
) -> None:
    """Check FILE against each consumer's loading rules (nothing is unpickled or run).

    Exit 0 when every consumer loads it completely, 3 when one would not (the table says
    which and why), 2 when FILE is not a readable safetensors file or BASE is unknown.
    """
    from charloop.families.detect import FamilyMismatch
    from charloop.models.consumers.base_modules import from_pipeline_folder, reference
    from charloop.models.consumers.check import check_adapter as run_checks
    from charloop.models.consumers.reader import UnreadableAdapter, read_adapter_file

    try:
        adapter = read_adapter_file(file)
    except UnreadableAdapter as exc:
        fail_with(exc, "not a LoRA file charloop can check")
    if base in ("sd15", "sdxl"):
        layout = reference(base)
    elif Path(base).is_dir():
        try:
            layout = from_pipeline_folder(Path(base))
        except (FileNotFoundError, FamilyMismatch) as exc:
            fail("bad --base", str(exc), EXIT_INVALID)
    else:
        fail(
            "bad --base", repr(base), EXIT_INVALID, "use 'sd15', 'sdxl' or a local diffusers folder"
        )
    verdicts = run_checks(adapter, layout)
    table = Table(title=f"{file.name} on a {base} base")
    for column in ("consumer", "loads", "detail"):
        table.add_column(column)
    for verdict in verdicts:
        table.add_row(verdict.consumer, "yes" if verdict.loads else "NO", escape(verdict.detail))
    Console(width=200).print(table)
    if not all(v.loads for v in verdicts):
        raise typer.Exit(EXIT_REFUSED)
