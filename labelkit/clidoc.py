"""Markdown CLI reference generated from the Typer app (docs/cli-reference.md is its output)."""

from __future__ import annotations

import typer

HEADER = """# CLI reference

Generated from the code by `python -m labelkit.clidoc > docs/cli-reference.md`; a test fails when
this file is out of date. Every stage command also takes `--help`.

Exit codes: 0 ok; 1 error (bad input, missing artifact, bad config file, or a bug in labelkit);
2 usage error (an unknown option, a bad option value, a bad `--set`); 3 a CI threshold was
breached (`detect-noise --fail-above`, also through `run`); 4 a stage raised a warning and
`--strict` was given; 130 interrupted.

An error is one line on stderr that names the flag, `--set STAGE.KEY` or `FILE [stage] key` it
came from. Defaults shown as `[default: ...]` come from the stage's config model
(labelkit/config.py), the same defaults a `--config` file falls back to.
"""


def _param_line(p) -> str:
    help_text = (p.help or "").strip().replace("|", "\\|")
    if p.param_type_name == "argument":
        return f"| `{p.name.upper()}` | {help_text} |"
    names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    return f"| {names} | {help_text} |"


def reference(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    ctx = type(root).context_class(root, info_name="labelkit")
    parts = [HEADER, "## Global options\n\nGiven before the command: `labelkit --debug run DATA`.\n"]
    rows = [_param_line(p) for p in root.params if p.name != "help"]
    parts.append("| parameter | help |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        usage = " ".join(["[OPTIONS]"] + [p.name.upper() for p in cmd.params if p.param_type_name == "argument"])
        parts.append(f"## `labelkit {name}`\n\n{(cmd.help or '').strip()}\n\n```\nlabelkit {name} {usage}\n```\n")
        rows = [_param_line(p) for p in cmd.params if p.name != "help"]
        parts.append("| parameter | help |\n| --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    from labelkit.cli import app

    print(reference(app), end="")
