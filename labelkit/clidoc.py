"""Markdown CLI reference generated from the Typer app (docs/cli-reference.md is its output)."""

from __future__ import annotations

import typer

HEADER = """# CLI reference

Generated from the code by `python -m labelkit.clidoc > docs/cli-reference.md`; a test fails when
this file is out of date. Every stage command also takes `--help`.

Exit codes: 0 ok; 1 error (bad input, missing artifact, bad config); 2 usage error;
3 a CI threshold was breached (`detect-noise --fail-above`, also through `run`).
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
    parts = [HEADER]
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
