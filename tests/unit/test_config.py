"""build_config: values from the file, then the command line; errors that name where a value came from."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re

import pytest

from labelkit.config import (
    STAGE_CONFIGS,
    ConfigError,
    OptionError,
    build_config,
    defaults,
    load_config_file,
    option_of,
    options,
    validate_options,
)
from labelkit.errors import BadInputError
from tests.conftest import ROOT


def test_command_line_overrides_the_file_and_none_means_not_given():
    cfg = build_config("pseudolabel", {"pseudolabel": {"alpha": 0.5, "k": 7}}, {"alpha": 0.8, "k": None})
    assert (cfg.alpha, cfg.k, cfg.gamma) == (0.8, 7, 3.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"alpha": 1.5}, "lk.toml [pseudolabel] alpha: must be < 1. Got 1.5 instead."),
        ({"k": 0}, "lk.toml [pseudolabel] k: must be >= 1. Got 0 instead."),
        ({"k": 2.5}, "lk.toml [pseudolabel] k: must be an integer. Got 2.5 instead."),
        ({"method": "magic"}, "lk.toml [pseudolabel] method: must be one of 'ensemble', 'propagation', 'prototype' or 'knn'. Got 'magic' instead."),
        ({"weights": [0, 0, 0]}, "lk.toml [pseudolabel] weights: must be 3 non-negative numbers, not all zero. Got [0, 0, 0] instead."),
        ({"weights": [1, "x", 0]}, "lk.toml [pseudolabel] weights[1]: must be a number. Got 'x' instead."),
    ],
)
def test_a_bad_file_value_is_a_config_error_naming_file_section_and_key(values, message):
    origins = {("pseudolabel", k): "lk.toml" for k in values}
    with pytest.raises(ConfigError) as e:
        build_config("pseudolabel", {"pseudolabel": values}, {}, origins=origins)
    assert str(e.value) == message and e.value.exit_code == 1 and not isinstance(e.value, OptionError)


def test_a_bad_command_line_value_is_an_option_error_exit_2():
    with pytest.raises(OptionError, match=r"^--set distill\.epochs: must be >= 1\. Got 0 instead\.$") as e:
        build_config("distill", {"distill": {"epochs": 0}}, {}, origins={("distill", "epochs"): "--set distill.epochs"})
    assert e.value.exit_code == 2
    with pytest.raises(OptionError, match=r"^--keep-issues/--drop-issues: must be true or false\. Got 'maybe' instead\.$"):
        build_config("distill", {}, {"keep_issues": "maybe"}, flags={"keep_issues": "--keep-issues/--drop-issues"})
    with pytest.raises(OptionError, match=r"^--fail-above: must be <= 1\. Got 2\.0 instead\.$"):
        build_config("detect-noise", {}, {"fail_above": 2.0})  # no flag given: the key, dashed


def test_unknown_keys_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"^config \[prototype\]: unknown key 'n_per_clas'; known: n_per_class, clean,"):
        build_config("prototype", {"prototype": {"n_per_clas": 2}}, {})
    with pytest.raises(OptionError, match=r"^--set prototype\.n_per_clas: unknown key 'n_per_clas' in \[prototype\]; known: n_per_class,"):
        build_config("prototype", {"prototype": {"n_per_clas": 2}}, {}, origins={("prototype", "n_per_clas"): "--set prototype.n_per_clas"})


def test_load_config_file_names_an_unknown_section(tmp_path):
    p = tmp_path / "lk.toml"
    p.write_text("[pseudolable]\nk = 3\n")
    with pytest.raises(ConfigError, match=r"lk\.toml: unknown section \[pseudolable\]; known: dataset, detect-noise"):
        load_config_file(p)


# One declaration per option (issue 15) ----------------------------------------------------------

PACKAGE = ROOT / "labelkit"


def _strings(path):
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_each_help_text_is_declared_once():
    """A help text lives in config.py once: not twice there, and in no other module (cli.py, stages, compute)."""
    helps = [o.help for s in STAGE_CONFIGS for o in options(s)]
    tree = ast.parse((PACKAGE / "config.py").read_text())
    literals = [n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "option"
                and len(n.args) > 1 and isinstance(n.args[1], ast.Constant)]
    assert len(literals) == len(set(literals)) >= 60, "a help text is typed twice in config.py: declare the option once and share it"
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("config.py",):
            continue
        for text in _strings(path):
            copied = [h for h in helps if len(h) >= 20 and h in text]
            assert not copied, f"{path.relative_to(ROOT)} repeats the help of a config option: {copied[0]!r}"


def test_cli_declares_no_config_option_by_hand():
    """cli.py generates every stage option from the config: no typer.Option there spells a config flag."""
    flags = {n for s in STAGE_CONFIGS for o in options(s) for n in o.names}
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "Option":
            decls = [a.value for a in call.args if isinstance(a, ast.Constant)]
            assert not {d for decl in decls for d in decl.split("/")} & (flags - {"--classes"}), f"cli.py declares {decls} by hand"


# Compute option classes: their defaults and checks are the config's (mapping: compute name -> config key).
COMPUTE_OPTIONS = [
    ("labelkit.pseudolabel", "PseudolabelOptions", "pseudolabel",
     {"method": "method", "n_neighbors": "k", "alpha": "alpha", "gamma": "gamma", "one_way_weight": "one_way_weight", "reach_prior": "reach_prior",
      "refine": "refine", "weights": "weights", "probe_weights": "probe_weights", "threshold": "threshold_rule", "threshold_value": "threshold",
      "top_k": "top_k", "sharpen": "sharpen", "n_folds": "calibration_folds", "calibration_samples": "calibration_samples",
      "prior_correction": "prior_correction", "seed": "seed"}),
    ("labelkit.distill.train_config", "TrainConfig", "distill",
     {"architecture": "student", "hidden": "hidden", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay",
      "temperature": "temperature", "alpha": "alpha", "confidence_weighting": "confidence_weighting", "soften_below": "soften_below",
      "val_fraction": "val_fraction", "patience": "patience", "vat": "vat", "fixmatch": "fixmatch", "fixmatch_threshold": "fixmatch_threshold",
      "fixmatch_rule": "fixmatch_rule", "label_filter": "label_filter", "ema": "ema"}),
    ("labelkit.probability_sources", "Sources", "detect-noise", {"k": "k", "folds": "folds"}),
]


@pytest.mark.parametrize(("module", "cls", "stage", "names"), COMPUTE_OPTIONS, ids=[c[1] for c in COMPUTE_OPTIONS])
def test_compute_option_defaults_come_from_the_config(module, cls, stage, names):
    mod = importlib.import_module(module)
    klass = getattr(mod, cls)
    fields = {f.name: f for f in dataclasses.fields(klass)}
    cfg = defaults(stage)
    for name, key in names.items():
        want = getattr(cfg, key)
        got = fields[name].default
        if key == "calibration_samples":
            want = want or None  # 0 in the config = None here: every fold
        assert got == want, f"{cls}.{name} defaults to {got!r}, the config's {stage}.{key} to {want!r}"
    # ...and are not typed there a second time: the class body takes them from the config.
    path = ROOT / (module.replace(".", "/") + ".py")
    body = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef) and n.name == cls)
    for stmt in body.body:
        if isinstance(stmt, ast.AnnAssign) and stmt.target.id in names and stmt.value is not None:
            assert not isinstance(stmt.value, (ast.Constant, ast.Tuple, ast.UnaryOp)), f"{cls}.{stmt.target.id}: a second default literal"


COMPUTE_DEFAULTS = [  # public compute functions whose keyword is a config option: (module, function, keyword, stage, key)
    ("labelkit.propagation", "knn_affinity", "gamma", "pseudolabel", "gamma"),
    ("labelkit.propagation", "knn_affinity", "one_way_weight", "pseudolabel", "one_way_weight"),
    ("labelkit.propagation", "spread_labels", "alpha", "pseudolabel", "alpha"),
    ("labelkit.pseudolabel", "label_spreading_scores", "alpha", "pseudolabel", "alpha"),
    ("labelkit.pseudolabel", "label_spreading_scores", "gamma", "pseudolabel", "gamma"),
    ("labelkit.pseudolabel", "knn_vote_scores", "gamma", "pseudolabel", "gamma"),
    ("labelkit.seeds", "drop_doubted", "odds", "pseudolabel", "clean_seeds_odds"),
    ("labelkit.api", "find_label_issues", "filter_by", "detect-noise", "filter_by"),
    ("labelkit.prototypes", "class_prototypes", "n_per_class", "prototype", "n_per_class"),
    ("labelkit.prototypes", "select_clean", "k", "prototype", "k"),
    ("labelkit.prototypes", "select_clean", "min_agreement", "prototype", "min_agreement"),
    ("labelkit.prototypes", "fuse_text", "weight", "prototype", "text_weight"),
    ("labelkit.prototypes", "refine_transductive", "temperature", "prototype", "refine_temperature"),
    ("labelkit.prototypes", "refine_transductive", "min_confidence", "prototype", "min_confidence"),
    ("labelkit.prototypes", "refine_transductive", "max_iter", "prototype", "max_iter"),
    ("labelkit.evidence", "find_conflicting_duplicates", "threshold", "detect-noise", "duplicate_threshold"),
    ("labelkit.evidence", "find_outliers", "cut", "detect-noise", "outlier_cut"),
    ("labelkit.thresholds", "threshold_fixed", "tau", "pseudolabel", "threshold"),
    ("labelkit.thresholds", "threshold_flexmatch", "tau", "pseudolabel", "threshold"),
    ("labelkit.distill.targets", "distillation_loss", "temperature", "distill", "temperature"),
    ("labelkit.distill.targets", "distillation_loss", "alpha", "distill", "alpha"),
    ("labelkit.novelty", "novelty_scores", "reject_rate", "pseudolabel", "novelty_rate"),
    ("labelkit.guarantee", "accept_pseudolabels", "error_confidence", "pseudolabel", "error_confidence"),
]


@pytest.mark.parametrize(("module", "func", "kw", "stage", "key"), COMPUTE_DEFAULTS, ids=[f"{c[1]}.{c[2]}" for c in COMPUTE_DEFAULTS])
def test_compute_function_defaults_come_from_the_config(module, func, kw, stage, key):
    f = getattr(importlib.import_module(module), func)
    assert inspect.signature(f).parameters[kw].default == getattr(defaults(stage), key)
    src = inspect.getsource(f).split(") ->")[0]
    assert not re.search(rf"\b{kw}: [\w |]+ = [\d.\"']", src), f"{func}({kw}=...) types the config's default a second time"


def test_no_stage_module_types_a_config_default():
    """A stage passes its config's values on; a keyword literal equal to a config default is a second copy of it."""
    by_key = {}
    for s in STAGE_CONFIGS:
        for o in options(s):
            if isinstance(o.default, (int, float)) and not isinstance(o.default, bool) and o.key not in ("seed",):
                by_key.setdefault(o.key, set()).add(o.default)
    for path in (PACKAGE / "stages").glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call):
                for kw in call.keywords:
                    if kw.arg in by_key and isinstance(kw.value, ast.Constant) and kw.value.value in by_key[kw.arg]:
                        pytest.fail(f"{path.name}:{kw.value.lineno}: {kw.arg}={kw.value.value!r} repeats a config default")


def test_validate_options_names_the_compute_argument_and_the_whole_range():
    with pytest.raises(BadInputError, match=r"^'alpha' must be in \[0, 1\)\. Got 1\.0 instead\.$"):
        validate_options("pseudolabel", {"alpha": 1.0})
    with pytest.raises(BadInputError, match=r"^'n_neighbors' must be >= 1\. Got 0 instead\.$"):
        validate_options("pseudolabel", {"k": 0}, names={"k": "n_neighbors"})
    with pytest.raises(BadInputError, match=r"^'epochs' must be an int >= 1\. Got 0 instead\.$"):
        validate_options("distill", {"epochs": 0}, int_word=True)
    assert validate_options("pseudolabel", {"k": 3}).k == 3


def test_bounds_and_shown_defaults_are_written_from_the_field():
    assert option_of("pseudolabel", "alpha").bounds == "in [0, 1)"
    assert option_of("detect-noise", "duplicate_threshold").bounds == "in (0, 1]"
    assert option_of("distill", "epochs").bounds == ">= 1"
    assert option_of("distill", "soft").shown == "hard" and option_of("prototype", "clean").shown == "clean"
    assert option_of("embed", "batch_size").shown == "per backend"
    assert option_of("pseudolabel", "probe_weights").flag == "--probe-weight" and option_of("pseudolabel", "probe_weights").repeatable


def test_threshold_is_checked_against_its_rule():
    with pytest.raises(OptionError, match=r"^--threshold: must be <= 1 for threshold_rule fixed\. Got 5\.0 instead\.$"):
        build_config("pseudolabel", {}, {"threshold": 5.0})
    with pytest.raises(ConfigError, match=r"must be an integer >= 0 for threshold_rule top_per_class"):
        build_config("pseudolabel", {"pseudolabel": {"threshold_rule": "top_per_class", "threshold": 2.5}}, {})
    assert build_config("pseudolabel", {"pseudolabel": {"threshold_rule": "top_per_class", "threshold": 50}}, {}).threshold == 50


def test_pseudolabel_options_from_config_map_every_key_and_check_in_compute_names():
    from labelkit.config import PseudolabelConfig
    from labelkit.pseudolabel import PseudolabelOptions, ScoreMethod
    from labelkit.thresholds import ThresholdRule

    cfg = PseudolabelConfig(k=7, method="knn", threshold_rule="margin", threshold=0.3, calibration_folds=3, calibration_samples=0, gamma=2.0)
    o = PseudolabelOptions.from_config(cfg)
    assert (o.n_neighbors, o.method, o.threshold, o.threshold_value, o.n_folds, o.calibration_samples, o.gamma) == (
        7, ScoreMethod.KNN, ThresholdRule.MARGIN, 0.3, 3, None, 2.0)
    assert PseudolabelOptions.from_config(PseudolabelConfig()) == PseudolabelOptions()
    with pytest.raises(BadInputError, match=r"^'threshold_value' must be <= 1 for threshold_rule fixed\. Got 5 instead\.$"):
        PseudolabelOptions(threshold_value=5)
    with pytest.raises(BadInputError, match=r"^'n_folds' must be >= 0\. Got -1 instead\.$"):
        PseudolabelOptions(n_folds=-1)


def test_the_config_choices_are_the_compute_enums_and_registry():
    """A choice is declared by the compute layer's enum or registry and offered by the config's Literal: they must agree."""
    from labelkit import noise, pseudolabel, thresholds
    from labelkit.distill.students import STUDENTS

    assert set(option_of("pseudolabel", "method").choices) == {m.value for m in pseudolabel.ScoreMethod}
    assert set(option_of("pseudolabel", "threshold_rule").choices) == {m.value for m in thresholds.ThresholdRule}
    assert set(option_of("detect-noise", "filter_by").choices) <= {m.value for m in noise.FilterMethod}
    assert set(option_of("detect-noise", "rank_by").choices) == {m.value for m in noise.QualityScore}
    assert set(option_of("distill", "student").choices) == set(STUDENTS)
