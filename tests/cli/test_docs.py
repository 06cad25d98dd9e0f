"""The docs stay true to the code: the CLI reference is current and every option has help."""

from __future__ import annotations

import typer

from labelkit.cli import app
from labelkit.clidoc import reference
from tests.conftest import ROOT


def test_cli_reference_is_up_to_date():
    current = (ROOT / "docs" / "cli-reference.md").read_text()
    assert current == reference(app), "docs/cli-reference.md is stale: run python -m labelkit.clidoc > docs/cli-reference.md"


def test_every_command_and_option_has_help():
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        assert (cmd.help or "").strip(), f"command {name} has no help"
        for p in cmd.params:
            assert (p.help or "").strip(), f"{name} {p.name} has no help"


def test_every_stage_has_a_docs_page():
    for page in ("embed", "prototype", "pseudolabel", "discover", "detect-noise", "distill", "predict", "report", "run"):
        assert (ROOT / "docs" / "stages" / f"{page}.md").is_file(), page


def test_options_table_is_up_to_date():
    from labelkit.clidoc import options_table

    current = (ROOT / "docs" / "options.md").read_text()
    assert current == options_table(), "docs/options.md is stale: run python -m labelkit.clidoc --options > docs/options.md"


def test_every_config_key_with_a_flag_is_an_option_of_its_command():
    """Each config field with a flag is a generated option of its stage's command, with the field's help and default."""
    from labelkit.config import STAGE_CONFIGS, options

    root = typer.main.get_command(app)
    for stage in STAGE_CONFIGS:
        if stage == "dataset":
            continue
        params = {p.name: p for p in root.commands[stage].params}
        for o in options(stage):
            assert o.cli, f"{stage}.{o.key} has no flag"
            p = params[o.param]
            assert [*p.opts, *p.secondary_opts] == o.names
            assert p.help == o.help_text() and p.help.startswith(o.help)
