"""Two runs on identical copies of the data give identical outputs (issue 14).

Each run is a fresh workspace on its own copy of the same digits subset, made by
``labelkit run DATA --until distill`` in a subprocess (embed with pixels:8, then prototype,
pseudolabel, detect-noise, and distill for 5 epochs of the mlp student), followed by
``labelkit predict`` of the student on the unlabeled images. Every Parquet output is compared by
contents, not bytes (the files' metadata holds timings): same columns, same rows in the same
order, and every value equal. The student (safetensors weights, metrics.json, dynamics.parquet,
predictions.parquet) is compared the same way: torch on CPU with the same seed and thread count
is bit-exact here, so the tolerance is 0 for everything.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_crash_safety import (
    CONFIG,
    OUTPUTS,
    STAGES,
    _close,
    assert_all_readable,
    assert_done_through,
    assert_same_outputs,
    labelkit_cmd,
    lk_here,
    make_subset,
    parquet_files,
    write_config,
)

ALL_OUTPUTS = [name for stage in STAGES for name in OUTPUTS[stage]]
# detect-noise with its default probabilities (auto: a K-fold softmax head in torch, kNN and label
# propagation, the best kept) and distill's default cross-fitted metrics: the torch-heavy paths.
DEFAULT_PROBS_CONFIG = CONFIG.replace('[detect-noise]\nprobs = "knn"\n', "").replace("folds = 2\n", "")


def _two_runs(tmp_path: Path, config_text: str) -> tuple[Path, Path, Path]:
    """Two fresh workspaces from identical copies, run at the same time in two subprocesses."""
    config = write_config(tmp_path, config_text)
    a = make_subset(tmp_path / "a")
    b = make_subset(tmp_path / "b")
    procs = [subprocess.Popen(labelkit_cmd("run", d, "--until", "distill", "--config", config),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for d in (a, b)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    for d in (a, b):
        lk_here("predict", d / ".labelkit" / "student", d / "unlabeled", "--out", d / ".labelkit" / "predicted")
    return a, b, config


def _assert_identical(a: Path, b: Path, config: Path) -> None:
    wa, wb = a / ".labelkit", b / ".labelkit"
    for d in (a, b):
        assert_all_readable(d / ".labelkit")
        assert_done_through(d, config, "distill")
    # The same set of Parquet files on both sides, every one of them equal, exactly.
    names_a = [p.relative_to(wa) for p in parquet_files(wa)]
    assert names_a == [p.relative_to(wb) for p in parquet_files(wb)]
    assert {str(n) for n in names_a} >= {n for n in ALL_OUTPUTS if n.endswith(".parquet")} | {"predicted/predictions.parquet"}
    assert_same_outputs(wa, wb, [str(n) for n in names_a], atol=0)
    assert_same_outputs(wa, wb, [n for n in ALL_OUTPUTS if not n.endswith(".parquet")], atol=0)
    # Each stage recorded the same parameters.
    ma, mb = (json.loads((w / "manifest.json").read_text())["stages"] for w in (wa, wb))
    assert sorted(ma) == sorted(mb)
    for stage in ma:
        _close(ma[stage]["params"], mb[stage]["params"], f"manifest {stage} params", 0)


def test_two_runs_on_identical_copies_give_identical_outputs(tmp_path):
    _assert_identical(*_two_runs(tmp_path, CONFIG))


@pytest.mark.slow
def test_two_runs_with_the_default_torch_probabilities_give_identical_outputs(tmp_path):
    _assert_identical(*_two_runs(tmp_path, DEFAULT_PROBS_CONFIG))
