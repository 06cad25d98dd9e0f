"""build_config: values from the file, then the command line; errors that name where a value came from."""

from __future__ import annotations

import pytest

from labelkit.config import ConfigError, OptionError, build_config, load_config_file


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
