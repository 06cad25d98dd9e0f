"""The command line itself (issue 13): --set/--model/--device on run, --strict, warnings on the
terminal, errors that name their flag, text printed as text, and the last-resort handler."""

from __future__ import annotations

import json
import re
import sys
import traceback

import pytest
import typer

from labelkit import artifacts
from labelkit.cli import app
from labelkit.config import STAGE_CONFIGS
from labelkit.health import STRICT_EXIT, warning
from labelkit.stages import distill as distill_stage
from labelkit.stages import pipeline
from labelkit.stages._common import StageResult
from tests.conftest import write_csv

BUG = "(this is a bug in labelkit; rerun with --debug for the traceback and report it)"
SHARP = warning("poor_separation", "the embedding separates [bold]nothing[/bold]", "try [/x] another --model")


@pytest.fixture
def vectors(tmp_path):
    return write_csv(tmp_path / "vec", 'id,embedding,label\na,"[1, 0]",x\nb,"[0, 1]",y\nc,"[0.9, 0.1]",\n')


def fake_stage(monkeypatch, *results: StageResult, raises: BaseException | None = None):
    """Make ``labelkit distill`` return ``results[0]`` (or raise) without computing anything."""
    def run(ctx, cfg, force=False):
        if raises is not None:
            raise raises
        return results[0]

    monkeypatch.setattr(distill_stage, "run", run)


# --set, --model, --device -------------------------------------------------------------------


def test_set_reaches_the_stage_config_and_wins_over_the_file(runner, digits, tmp_path):
    cfg = tmp_path / "lk.toml"
    cfg.write_text('[embed]\nmodel = "pixels:4"\nrow_group_size = 100\n')
    r = runner.invoke(app, ["run", str(digits), "--until", "embed", "--config", str(cfg), "--set", "embed.model=pixels:8",
                            "--set", "embed.row_group_size=512", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [s["stage"] for s in out["stages"]] == ["embed"]
    assert out["stages"][0]["model"] == "pixels:8" and out["stages"][0]["dim"] == 64  # a plain string, not TOML
    params = artifacts.read_metadata(digits / ".labelkit" / artifacts.EMBEDDINGS)["params"]
    assert params["model"] == "pixels:8" and params["row_group_size"] == 512  # TOML int 512, over the file's 100
    assert out["warnings"] == [{"stage": "embed", **w} for w in out["stages"][0]["warnings"]]


def test_model_and_device_are_sugar_for_set(runner, vectors, monkeypatch):
    seen = {}

    def fake_pipeline(ctx, *, start=None, until=None, force=False):
        seen.update({name: ctx.config(name) for name in ("embed", "detect-noise", "distill", "pseudolabel")})
        return []

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    r = runner.invoke(app, ["run", str(vectors), "--model", "pixels:8", "--device", "cpu", "--set", "pseudolabel.threshold=0.9"])
    assert r.exit_code == 0, r.output
    assert seen["embed"].model == "pixels:8"
    assert seen["embed"].device == seen["detect-noise"].device == seen["distill"].device == "cpu"
    assert seen["pseudolabel"].threshold == 0.9


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("pseudolabel.alpah=1", "error: --set pseudolabel.alpah: unknown key 'alpah' in [pseudolabel]; known: method, k, alpha,"),
        ("pseudolabel.alpha=1.5", "error: --set pseudolabel.alpha: must be < 1. Got 1.5 instead.\n"),
        ("detect-noise.folds=1", "error: --set detect-noise.folds: must be >= 2. Got 1 instead.\n"),
        ("distill.epochs=ten", "error: --set distill.epochs: must be an integer. Got 'ten' instead.\n"),
        ("pseudolabl.alpha=0.5", "error: --set pseudolabl.alpha: unknown stage 'pseudolabl'; known: dataset, detect-noise,"),
        ("pseudolabel.alpha", "error: --set pseudolabel.alpha: expected STAGE.KEY=VALUE, e.g. --set pseudolabel.threshold=0.9\n"),
    ],
)
def test_bad_set_is_a_usage_error_before_any_stage_runs(runner, vectors, item, message):
    r = runner.invoke(app, ["run", str(vectors), "--set", item])
    assert r.exit_code == 2
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1
    assert not (vectors / ".labelkit" / artifacts.EMBEDDINGS).exists()


def test_a_bad_later_section_fails_before_embed_runs(runner, vectors, tmp_path):
    cfg = tmp_path / "lk.toml"
    cfg.write_text("[distill]\nepochz = 3\n")
    r = runner.invoke(app, ["run", str(vectors), "--config", str(cfg)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {cfg} [distill]: unknown key 'epochz'; known: student,")
    assert not (vectors / ".labelkit" / artifacts.EMBEDDINGS).exists()
    # A single stage command checks the other sections too: embed would run first, and distill is wrong.
    r = runner.invoke(app, ["embed", str(vectors), "--config", str(cfg)])
    assert r.exit_code == 1 and f"{cfg} [distill]: unknown key 'epochz'" in r.stderr
    assert not (vectors / ".labelkit" / artifacts.EMBEDDINGS).exists()


# Errors name their flag --------------------------------------------------------------------------


def test_bad_option_value_names_the_flag_and_is_a_usage_error(runner, vectors, tmp_path):
    r = runner.invoke(app, ["pseudolabel", str(vectors), "--alpha", "1.5"])
    assert (r.exit_code, r.stderr) == (2, "error: --alpha: must be < 1. Got 1.5 instead.\n")
    r = runner.invoke(app, ["detect-noise", str(vectors), "--folds", "1"])
    assert (r.exit_code, r.stderr) == (2, "error: --folds: must be >= 2. Got 1 instead.\n")
    r = runner.invoke(app, ["pseudolabel", str(vectors), "--method", "magic"])
    assert (r.exit_code, r.stderr) == (2, "error: --method: must be one of 'ensemble', 'propagation', 'prototype' or 'knn'. Got 'magic' instead.\n")
    r = runner.invoke(app, ["distill", str(vectors), "--with-pseudolabels", "--fixmatch-threshold", "2"])
    assert (r.exit_code, r.stderr) == (2, "error: --fixmatch-threshold: must be <= 1. Got 2.0 instead.\n")
    assert not (vectors / ".labelkit" / artifacts.EMBEDDINGS).exists()


def test_same_bad_value_in_a_config_file_names_the_file_and_exits_1(runner, vectors, tmp_path):
    cfg = tmp_path / "lk.toml"
    cfg.write_text("[pseudolabel]\nalpha = 1.5\n")
    r = runner.invoke(app, ["pseudolabel", str(vectors), "--config", str(cfg)])
    assert (r.exit_code, r.stderr) == (1, f"error: {cfg} [pseudolabel] alpha: must be < 1. Got 1.5 instead.\n")
    # The flag overrides the file's bad value, so nothing is wrong any more.
    r = runner.invoke(app, ["pseudolabel", str(vectors), "--config", str(cfg), "--alpha", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stage"] == "pseudolabel"


# --strict and warnings ---------------------------------------------------------------------------


def test_warnings_are_printed_and_strict_exits_4(runner, vectors, monkeypatch):
    up = StageResult("teacher", summary={"warnings": [warning("w_up", "upstream doubt", "look upstream")]})
    fake_stage(monkeypatch, StageResult("distill", reason="never run", summary={"warnings": [SHARP], "path": "[final]"}, upstream=[up]))
    r = runner.invoke(app, ["distill", str(vectors)])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines.index("warning: [teacher] upstream doubt") < lines.index("distill: ran (first run); wrote ")
    assert "warning: [teacher] upstream doubt" in lines and "  try: look upstream" in lines
    assert "warning: [distill] the embedding separates [bold]nothing[/bold]" in lines  # text, not markup
    assert "  try: [/x] another --model" in lines and "  path: [final]" in lines
    r = runner.invoke(app, ["distill", str(vectors), "--strict"])
    assert r.exit_code == STRICT_EXIT == 4
    assert r.stderr.splitlines()[-1] == "fail: --strict: 2 warnings (above)"
    r = runner.invoke(app, ["distill", str(vectors), "--strict", "--json"])
    assert r.exit_code == 4
    assert json.loads(r.stdout)["warnings"] == [SHARP]  # stdout is JSON alone; the warnings also go to stderr
    assert "warning: [distill] the embedding separates [bold]nothing[/bold]" in r.stderr


def test_strict_without_warnings_exits_0_and_a_ci_gate_wins_over_4(runner, vectors, monkeypatch):
    fake_stage(monkeypatch, StageResult("distill", summary={"warnings": []}))
    assert runner.invoke(app, ["distill", str(vectors), "--strict"]).exit_code == 0
    fake_stage(monkeypatch, StageResult("distill", summary={"warnings": [SHARP]}, exit_code=3, message="issue rate 40% > 10%"))
    r = runner.invoke(app, ["distill", str(vectors), "--strict"])
    assert r.exit_code == 3 and "fail: issue rate 40% > 10%" in r.stderr


def test_run_json_lists_every_warning_at_the_top_and_strict_exits_4(runner, vectors, monkeypatch):
    results = [StageResult("embed", skipped=True, reason="up to date", summary={"warnings": [SHARP]}),
               StageResult("prototype", summary={"warnings": []}),
               StageResult("pseudolabel", summary={"warnings": [warning("none_accepted", "none passed", "lower --threshold")]})]
    monkeypatch.setattr(pipeline, "run_pipeline", lambda ctx, **kw: results)
    r = runner.invoke(app, ["run", str(vectors), "--json"])
    assert r.exit_code == 0, r.output
    assert [w["code"] for w in json.loads(r.stdout)["warnings"]] == ["poor_separation", "none_accepted"]
    assert [w["stage"] for w in json.loads(r.stdout)["warnings"]] == ["embed", "pseudolabel"]
    r = runner.invoke(app, ["run", str(vectors), "--json", "--strict"])
    assert r.exit_code == 4 and "warning: [pseudolabel] none passed" in r.stderr


# Text is printed as text, on one line ---------------------------------------------------------


def test_markup_looking_paths_are_printed_intact(runner, tmp_path):
    r = runner.invoke(app, ["embed", str(tmp_path / "data[final]")])
    assert (r.exit_code, r.stderr) == (1, f"error: {tmp_path / 'data[final]'}: no such dataset folder or file\n")
    r = runner.invoke(app, ["embed", str(tmp_path / "data[/x]")])  # a closing tag with no opening one
    assert (r.exit_code, r.stderr) == (1, f"error: {tmp_path / 'data[/x]'}: no such dataset folder or file\n")


def test_a_long_error_is_one_line_when_piped(runner, tmp_path):
    long = tmp_path.joinpath(*["a-folder-with-a-rather-long-name"] * 8)
    r = runner.invoke(app, ["embed", str(long)])
    assert r.exit_code == 1
    assert r.stderr == f"error: {long}: no such dataset folder or file\n" and len(r.stderr) > 200


# The last resort -----------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_exit_1(runner, vectors, monkeypatch):
    fake_stage(monkeypatch, raises=RuntimeError("boom [/x]"))
    r = runner.invoke(app, ["distill", str(vectors)])
    assert (r.exit_code, r.stderr) == (1, f"error: internal error: RuntimeError: boom [/x] {BUG}\n")
    assert "Traceback" not in r.output


def test_debug_reraises_with_the_traceback(runner, vectors, monkeypatch):
    fake_stage(monkeypatch, raises=RuntimeError("boom"))
    r = runner.invoke(app, ["--debug", "distill", str(vectors)])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)
    assert "internal error" not in r.stderr
    assert "in run\n    raise raises" in "".join(traceback.format_exception(*r.exc_info))


def test_keyboard_interrupt_exits_130(runner, vectors, monkeypatch):
    fake_stage(monkeypatch, raises=KeyboardInterrupt())
    r = runner.invoke(app, ["distill", str(vectors)])
    assert (r.exit_code, r.stderr) == (130, "interrupted\n")


# --help ------------------------------------------------------------------------------------------


def _expected_default(value, param) -> str:
    """What --help should show for a config default, worked out here independently of cli.py."""
    if isinstance(value, bool):
        return (param.opts if value else param.secondary_opts)[0].lstrip("-")
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_every_shown_default_is_the_config_default():
    root = typer.main.get_command(app)
    checked = 0
    for name, cmd in root.commands.items():
        stage = "embed" if name == "run" else name
        if stage not in STAGE_CONFIGS:
            continue
        fields = STAGE_CONFIGS[stage].model_fields
        for p in cmd.params:
            if p.name not in fields:
                continue
            shown = re.findall(r"\[default: ([^\]]*)\]", p.help or "")
            default = fields[p.name].default
            if default is None:
                continue  # a worded default ("per backend") or none
            assert shown == [_expected_default(default, p)], f"{name} --{p.name}: help shows {shown}, config says {default!r}"
            checked += 1
    assert checked >= 50


def test_help_prints_brackets_as_written(runner):
    r = runner.invoke(app, ["pseudolabel", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert "label spreading: weight of neighbours against the seeds, in [0, 1) [default: 0.9]" in text
    r = runner.invoke(app, ["detect-noise", "--help"])
    assert "auto (CUDA when present), cpu, cuda[:N] [default: auto]" in " ".join(r.stdout.split())
    r = runner.invoke(app, ["--help"])
    assert "--debug" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_issue17_commands_turn_transparent_huge_pages_off_for_their_process(runner):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    get, set_ = 42, 41  # PR_GET_THP_DISABLE, PR_SET_THP_DISABLE
    before = libc.prctl(get, 0, 0, 0, 0)
    try:
        libc.prctl(set_, 0, 0, 0, 0)
        assert libc.prctl(get, 0, 0, 0, 0) == 0
        assert runner.invoke(app, ["status", "--help"]).exit_code == 0
        assert libc.prctl(get, 0, 0, 0, 0) == 1  # what the command left set
    finally:
        libc.prctl(set_, before, 0, 0, 0)
