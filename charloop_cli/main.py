"""``charloop``: validate params, run the loop, run single stages (for DVC), manage the
registry. Exit codes: 0 done, 1 failed, 2 bad input (params, arguments, paths, models),
3 refused by a gate or an integrity check (nothing changed); --debug shows tracebacks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charloop.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, CharloopError
from charloop_cli.adapter_cmds import check_adapter
from charloop_cli.common import (
    ParamsOption,
    console,
    fail,
    fail_with,
    load_or_exit,
    quiet_expected_tracebacks,
    quiet_import_noise,
    say,
    setup_logging,
)
from charloop_cli.deploy_cmds import deploy, ingest
from charloop_cli.registry_cmds import register
from charloop_cli.report_cmds import report_app
from charloop_cli.review import review_app
from charloop_cli.stage_cmds import stage_app
from charloop_cli.world_cmds import world_app

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(stage_app, name="stage")
app.add_typer(review_app, name="review")
app.add_typer(report_app, name="report")
app.add_typer(world_app, name="world")
register(app)
app.command()(deploy)
app.command()(ingest)
app.command("check-adapter")(check_adapter)

DEBUG_ENV = "CHARLOOP_DEBUG"


@app.callback()
def options(
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="Show the traceback of a failure.")
    ] = False,
) -> None:
    """Validate params, run the loop, run single stages (for DVC), manage the registry.

    Exit codes: 0 done, 1 failure, 2 bad input (params, arguments, paths, models),
    3 refused by a gate or an integrity check (nothing was changed).
    """
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command("params-reference")
def params_reference(
    out: Annotated[
        Path | None, typer.Option(help="Write the page here (default: print it).")
    ] = None,
) -> None:
    """The params.yaml reference (every field, type, default, meaning), generated from the
    schema; `--out docs/params.md` refreshes the documentation page."""
    from charloop.core.atomic import write_text
    from charloop_cli.params_reference import reference_markdown

    text = reference_markdown()
    if out is None:
        typer.echo(text, nl=False)
        return
    write_text(out, text)
    say(f"wrote {out}")


@app.command()
def validate(
    params: Annotated[Path, typer.Argument(help="params.yaml to check.")] = Path("params.yaml"),
    params_option: Annotated[
        Path | None, typer.Option("--params", "-p", help="The same, as the other verbs take it.")
    ] = None,
) -> None:
    """Check params.yaml against the schema and price the training run's memory plan:
    prints the plan and OK, or every error (exit code 2)."""
    from charloop.core.errors import BadInput
    from charloop.families.detect import FamilyMismatch, resolve_base
    from charloop.models.memory_budget import check_memory
    from charloop.models.pipeline import resolve_device
    from charloop.scenes.heldout import HeldOutLeak
    from charloop.scenes.references import load_references
    from charloop.stages.caption.heldout import check_held_out

    params = params_option or params
    project = load_or_exit(params)
    for member in project.params.members:  # the folders must exist and hold images
        if member.references:
            try:
                load_references(project.resolve(member.references))
            except FileNotFoundError as exc:  # NoUsableReferences too
                fail("invalid references", str(exc), EXIT_BAD_INPUT)
    try:
        check_held_out(project)  # evaluation contexts never reach the training captions
    except HeldOutLeak as exc:
        fail_with(exc, "held-out contexts leak into training")
    spec = project.params.base_model
    base_ref = project.model_ref(spec.path)
    if Path(base_ref).is_dir() or spec.family != "auto":  # no hub lookups for 'auto' here
        try:
            resolved = resolve_base(spec, base_ref).family
        except FamilyMismatch as exc:
            fail_with(exc, "base model does not match the params")
        family = resolved.name
        from charloop.models.trigger_embedding import EmbeddingUnsupported, check_family

        if project.params.train.trigger_embedding.enabled:
            try:
                check_family(family)
            except EmbeddingUnsupported as exc:
                fail_with(exc, "the base cannot carry a trigger embedding")
        try:
            device = resolve_device(spec.device)
            typer.echo(check_memory(project.params, base_ref, resolved, device).line())
        except BadInput as exc:  # over the budget, or a missing lowmem package
            fail_with(exc, "the training run's memory plan")
    else:
        family = "auto"
    if project.params.traits is not None:
        from charloop.scenes.traits import TraitError, check_traits

        try:
            trait_sets = check_traits(project)
        except TraitError as exc:
            fail_with(exc, "traits cannot be checked")
        for name, traits in trait_sets.items():
            typer.echo(
                f"traits of {name}: declared {', '.join(traits.declared) or 'none'}; "
                f"discovered on the references: {', '.join(traits.discovered) or 'none'}"
            )
    if project.params.train.trigger_embedding.enabled:
        from charloop.stages.train.trigger_embedding import starting_text

        member = project.params.members[0]
        free = project.params.train.trigger_embedding.free_vectors
        extra = f", and {free} free vectors as '{member.trigger}'" if free else ""
        typer.echo(
            f"trigger embedding: '{member.trigger}' starts as '{starting_text(project)}'{extra}"
        )
    kind = "cast" if project.params.cast else "character"
    typer.echo(f"OK: {params} ({kind} '{project.params.subject}', {family} base)")


@app.command()
def run(
    params: ParamsOption = Path("params.yaml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the character loop (a Prefect flow) and print a summary table."""
    project = load_or_exit(params)
    setup_logging(verbose)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API can take longer than its 20 s default on a loaded 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from charloop.lineage.preflight import preflight
    from charloop_cli.prefect_api import start_temporary_api

    memory = preflight(project)  # bad input fails before Prefect starts (exit 2, see main())
    say(memory.line())  # before any image is drawn
    api_ready = start_temporary_api()  # boots while the flow's modules import
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.character_loop import character_loop
    from flows.runners import task_runner_for

    api = api_ready()
    loop = character_loop.with_options(task_runner=task_runner_for(project.params.scale))
    with temporary_settings(updates={PREFECT_API_URL: api} if api else {}):
        rows = loop(params_file=str(project.params_file))  # errors: see main()
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(rows))


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """The end-of-run table: one row per iteration; the best round's version is marked
    ``candidate``."""
    table = Table(title="charloop iterations")
    for name in (
        "round",
        "iteration",
        "kept",
        "trained on",
        "identity",
        "ref. match",
        "layout variety",
        "prompt fid.",
        "all traits: data / LoRA",
        "version",
        "decision",
    ):
        table.add_column(name)
    best = max((i for i, row in enumerate(rows) if row.get("best", True)), default=None)
    for index, row in enumerate(rows):
        fidelity = row.get("prompt_fidelity")
        variety = row.get("layout_diversity")
        match = row.get("reference_match")
        table.add_row(
            str(row.get("round", 1)),
            str(row["iteration"]),
            f"{row['kept']} of {row['generated']}",
            str(row.get("trained_on", "-")),
            f"{row['identity_consistency']:.4f} (base {row['base_identity_consistency']:.4f})",
            _with_base(match, row.get("base_reference_match")),
            _with_base(variety, row.get("base_layout_diversity")),
            "-" if fidelity is None else f"{fidelity:.4f}",
            _traits_cell(row.get("kept_traits_all"), row.get("traits_all")),
            f"{row['version']}{' candidate' if index == best else ''}",
            escape(str(row["decision"])),
        )
    return table


def _traits_cell(data: float | None, lora: float | None) -> str:
    """The share of the kept set and of the LoRA's evaluation renders showing every trait:
    whether the data or the training limits a round."""
    if data is None and lora is None:
        return "-"
    return " / ".join("-" if v is None else f"{v:.0%}" for v in (data, lora))


def _with_base(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if base is None else f"{value:.4f} (base {base:.4f})"


@app.command("build-tiny-models")
def build_tiny_models(
    out: Annotated[Path, typer.Option(help="Folder for the models.")] = Path("models"),
    seed: int = 0,
) -> None:
    """Rebuild the embedded tiny SD1.5 pipeline and CLIP embedder, deterministically."""
    from charloop.models.embedded import build_all

    setup_logging(False)
    for path in build_all(out, seed):
        typer.echo(str(path))


def main(argv: list[str] | None = None) -> None:
    """The ``charloop`` console entry point: one clear line per failure, no traceback.

    charloop's own errors exit with their kind's code (2 bad input, 3 refused, 1 failed);
    anything else is a failure (1). ``--debug`` (or ``CHARLOOP_DEBUG=1``) re-raises, so
    the traceback shows.
    """
    argv = sys.argv[1:] if argv is None else argv
    quiet_import_noise()
    if "--debug" not in argv and os.environ.get(DEBUG_ENV, "").lower() not in ("1", "true", "yes"):
        quiet_expected_tracebacks()
    try:
        app(args=argv, prog_name="charloop")
    except KeyboardInterrupt:
        say("interrupted; finished stages are kept, a re-run resumes")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            raise
        verb = next((a for a in argv if not a.startswith("-")), "")
        code = exc.exit_code if isinstance(exc, CharloopError) else EXIT_FAILURE
        console.print(f"[red]charloop {escape(verb)} stopped[/red]", end=": ")
        say(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, CharloopError):
            say("this is unexpected: run again with --debug for the traceback, and report it")
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
