"""The documentation: the params reference matches the schema, the README is a front door,
and every page the README links to exists (CI also builds the site with `make docs`)."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_params_reference_page_is_the_schema():
    from charloop.params.schema import Params
    from charloop_cli.params_reference import field_docs, reference_markdown

    page = (REPO / "docs" / "params.md").read_text()
    assert page == reference_markdown(), "run `charloop params-reference --out docs/params.md`"
    paths = [doc.path for doc in field_docs(Params)]
    assert len(paths) > 150 and len(set(paths)) == len(paths)
    for path in paths:
        assert f"| `{path.replace('|', chr(92) + '|')}` |" in page, path
    for section in Params.model_fields:  # every top-level section has its heading
        assert f"## `{section}`" in page


def test_every_nested_field_is_documented():
    """A field added without a docstring shows up here, not as an empty cell."""
    from charloop.params.schema import Params
    from charloop_cli.params_reference import field_docs

    tags = ("type", "policy")
    missing = [d.path for d in field_docs(Params) if not d.description and
               d.path.rsplit(".", 1)[-1] not in tags]  # fmt: skip
    assert missing == [], missing


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 250
    first_screen = "\n".join(lines[:60])
    for verb in ("make run", "make test", "charloop run", "charloop review serve",
                 "charloop promote", "charloop approve"):  # fmt: skip
        assert verb in first_screen, verb
    for target in re.findall(r"\]\(((?:docs/)[^)#]*)", "\n".join(lines)):
        assert (REPO / target).exists(), target


def test_every_docs_page_is_in_the_site_nav():
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, str):
            listed.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(nav)
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages == listed
