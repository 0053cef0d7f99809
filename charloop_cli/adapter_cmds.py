"""``charloop check-adapter``: would a LoRA file load in diffusers, kohya, ComfyUI, InvokeAI?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charloop.models.trigger_embedding import TRIGGER_EMBEDDING
from charloop_cli.common import EXIT_INVALID, EXIT_REFUSED, fail, fail_with

REFERENCE_BASES = ("sd15", "sdxl", "flux")
BASE_HELP = (
    "'sd15', 'sdxl' or 'flux' (the reference layouts) or a local diffusers pipeline folder; "
    "default: the family the file's header (ss_base_model_version, modelspec.architecture) "
    "or key layout names."
)


def check_adapter(
    path: Annotated[
        Path,
        typer.Argument(
            help="A LoRA .safetensors file, or an adapter folder (every .safetensors in it)."
        ),
    ],
    base: Annotated[str | None, typer.Option(help=BASE_HELP)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verdicts as JSON (for CI).")
    ] = False,
) -> None:
    """Check PATH against each consumer's loading rules (nothing is unpickled or run).

    Exit 0 when every consumer loads every file completely, 3 when one would not (the table
    says which and why), 2 when a file is not a readable safetensors file, the family
    cannot be told, or BASE is unknown.
    """
    from charloop.models.consumers.reader import UnreadableAdapter, read_adapter_file

    files = _files_of(path)
    embeddings = [f for f in files if f.name == TRIGGER_EMBEDDING]
    files = [f for f in files if f.name != TRIGGER_EMBEDDING]
    if embeddings and not files:
        fail("not a LoRA file", f"{path} is a trigger embedding (textual inversion), which "
             "tools load as an embedding, not a LoRA", EXIT_INVALID, "check its LoRA files "
             "(the adapter folder), see docs/lineage.md for loading the embedding")  # fmt: skip
    adapters = []
    for file in files:
        try:
            adapters.append(read_adapter_file(file))
        except UnreadableAdapter as exc:
            fail_with(exc, "not a LoRA file charloop can check")
    reports = [_check_one(adapter, base) for adapter in adapters]
    if as_json:
        typer.echo(json.dumps({"files": reports, "loads": all(r["loads"] for r in reports)}))
    else:
        for report in reports:
            _print_table(report)
        for embedding in embeddings:  # loaded as an embedding: no LoRA rules apply
            typer.echo(f"{embedding.name}: the trigger's embedding (textual inversion), "
                       "loaded beside the LoRA as an embedding (docs/lineage.md)")  # fmt: skip
        if any(not r["loads"] and r["base_from"] != "--base" for r in reports):
            typer.echo("checked against the family's reference layout (its released base "
                       "model); for a LoRA of another checkpoint pass --base <its diffusers "
                       "folder>")  # fmt: skip
    if not all(r["loads"] for r in reports):
        raise typer.Exit(EXIT_REFUSED)


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            fail("no LoRA files", f"{path} holds no .safetensors file", EXIT_INVALID)
        return files
    return [path]  # the reader says what is wrong with a missing or unreadable file


def _check_one(adapter: Any, base: str | None) -> dict[str, Any]:
    """One file's verdicts against ``base`` (or the family the file names)."""
    from charloop.families.detect import FamilyMismatch
    from charloop.models.consumers.base_modules import from_pipeline_folder, reference
    from charloop.models.consumers.check import check_adapter as run_checks
    from charloop.models.consumers.family_of_file import detect_family

    source = "--base"
    if base is None:
        found = detect_family(adapter)
        if found is None:
            fail("cannot tell the base family", f"{adapter.path} names none in its header or "
                 "keys", EXIT_INVALID, f"pass --base ({', '.join(REFERENCE_BASES)} or a "
                 "diffusers folder)")  # fmt: skip
        base, source = found
    if base in REFERENCE_BASES:
        layout = reference(base)
    elif Path(base).is_dir():
        try:
            layout = from_pipeline_folder(Path(base))
        except (FileNotFoundError, FamilyMismatch) as exc:
            fail("bad --base", str(exc), EXIT_INVALID)
    else:
        choices = ", ".join(map(repr, REFERENCE_BASES))
        fail("bad --base", repr(base), EXIT_INVALID, f"use {choices} or a local diffusers folder")
    verdicts = run_checks(adapter, layout)
    return {
        "file": str(adapter.path),
        "base": base,
        "base_from": source,
        "loads": all(v.loads for v in verdicts),
        "consumers": [
            {"consumer": v.consumer, "loads": v.loads, "detail": v.detail} for v in verdicts
        ],
    }


def _print_table(report: dict[str, Any]) -> None:
    name = Path(report["file"]).name
    table = Table(title=f"{name} on a {report['base']} base (from {report['base_from']})")
    for column in ("consumer", "loads", "detail"):
        table.add_column(column)
    for verdict in report["consumers"]:
        loads = "yes" if verdict["loads"] else "NO"
        table.add_row(verdict["consumer"], loads, escape(verdict["detail"]))
    Console(width=200).print(table)
