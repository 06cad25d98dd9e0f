"""Markdown generated from the code: the CLI reference from the Typer app (docs/cli-reference.md), and
the table of every config option from the config models (docs/options.md).

``python -m labelkit.clidoc > docs/cli-reference.md``; ``python -m labelkit.clidoc --options > docs/options.md``.
"""

from __future__ import annotations

import sys
import typing

import typer

HEADER = """# CLI reference

Generated from the code by `python -m labelkit.clidoc > docs/cli-reference.md`; a test fails when
this file is out of date. Every stage command also takes `--help`.

Exit codes: 0 ok; 1 error (bad input, missing artifact, bad config file, or a bug in labelkit);
2 usage error (an unknown option, a bad option value, a bad `--set`); 3 a CI threshold was
breached (`detect-noise --fail-above`, also through `run`); 4 a stage raised a warning and
`--strict` was given; 130 interrupted.

An error is one line on stderr that names the flag, `--set STAGE.KEY` or `FILE [stage] key` it
came from. Every stage option, its bounds and its `[default: ...]` are generated from the stage's
config model (labelkit/config.py), the same declarations a `--config` file is checked against;
[options.md](options.md) lists them by config key.
"""

OPTIONS_HEADER = """# Options

Every stage option, generated from the config models (labelkit/config.py) by
`python -m labelkit.clidoc --options > docs/options.md`; a test fails when this file is out of date.

A key is set, from lowest to highest precedence, by its default, by a `--config FILE.toml` table
(`[pseudolabel]` then `alpha = 0.8`), by `labelkit run --set pseudolabel.alpha=0.8`, or by the
stage command's flag (`labelkit pseudolabel DATA --alpha 0.8`). A key without a flag is set by the
first two only. The same declarations are the defaults and checks of the compute option classes
(`labelkit.pseudolabel.PseudolabelOptions`, `labelkit.distill.TrainConfig`).
"""


def _esc(text: str) -> str:
    return text.strip().replace("|", "\\|")


def _param_line(p) -> str:
    help_text = _esc(p.help or "")
    if p.param_type_name == "argument":
        return f"| `{p.name.upper()}` | {help_text} |"
    names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    if isinstance(p.metavar, str) and p.metavar.startswith("["):  # the choices of a Literal field
        names += f" `{p.metavar}`"
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


def _type(o) -> str:
    if o.choices:
        return " \\| ".join(f"`{c}`" for c in o.choices)
    args = typing.get_args(o.annotation)
    if o.repeatable:
        return f"list of {args[0].__name__}"
    if typing.get_origin(o.annotation) is tuple:
        return f"{len(args)} {args[0].__name__}s"
    return getattr(o.annotation, "__name__", str(o.annotation))


def _default(o) -> str:
    if o.default is None:
        return o.shown or "none"
    if isinstance(o.default, bool):
        return str(o.default).lower()
    if isinstance(o.default, tuple):
        return "[" + ", ".join(map(str, o.default)) + "]"
    return f"`{o.default}`" if isinstance(o.default, str) else str(o.default)


def options_table() -> str:
    """docs/options.md: one table per stage, one row per config key."""
    from labelkit.config import STAGE_CONFIGS, options

    order = ["dataset", "embed", "prototype", "pseudolabel", "detect-noise", "distill", "predict", "report"]
    parts = [OPTIONS_HEADER]
    for stage in [*order, *(s for s in STAGE_CONFIGS if s not in order)]:
        cls = STAGE_CONFIGS[stage]
        runtime = sorted(cls.runtime_fields)
        intro = [(cls.__doc__ or "").strip()] if stage == "dataset" else []
        if runtime:
            intro.append(f"Keys that change only the speed, not the results (left out of the fingerprint): {', '.join(f'`{k}`' for k in runtime)}.")
        parts.append("\n\n".join([f"## `[{stage}]`", *intro]) + "\n")
        rows = []
        for o in options(stage):
            flag = " / ".join(f"`{n}`" for n in o.names) if o.cli else ("`--classes`" if stage == "dataset" else "(none)")
            rows.append(f"| `{o.key}` | {flag} | {_type(o)} | {_default(o)} | {o.bounds or ''} | {_esc(o.help)} |")
        parts.append("| key | flag | type | default | bounds | what it does |\n| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    if sys.argv[1:] == ["--options"]:
        print(options_table(), end="")
    else:
        from labelkit.cli import app

        print(reference(app), end="")
