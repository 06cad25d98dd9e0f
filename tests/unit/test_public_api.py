"""The documented Python API (issue 15): the public names stay importable and light, and every
example in docs/python-api.md runs and prints what the page says."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import labelkit
from labelkit import api, noise
from labelkit.cli import app
from labelkit.errors import BadInputError, LabelkitError, MissingArtifactError
from tests.conftest import ROOT, write_csv

DOC = ROOT / "docs" / "python-api.md"
VECTORS = {"a1": "[1, 0]", "a2": "[0.99, 0.1]", "a3": "[0.97, 0.2]", "a4": "[0.98, 0.15]",
           "b1": "[0, 1]", "b2": "[0.1, 0.99]", "b3": "[0.2, 0.97]", "b4": "[0.15, 0.98]"}
GIVEN = {"a1": "cat", "a2": "cat", "b1": "dog", "b2": "dog"}


@pytest.fixture
def pseudolabeled(tmp_path):
    """A dataset of eight 2-d vectors, four labeled, after ``labelkit pseudolabel DATA --threshold 0.6``."""
    rows = "".join(f'{i},"{v}",{GIVEN.get(i, "")}\n' for i, v in VECTORS.items())
    data = write_csv(tmp_path / "data", "id,embedding,label\n" + rows)
    r = CliRunner().invoke(app, ["pseudolabel", str(data), "--threshold", "0.6", "--json"])
    assert r.exit_code == 0, r.output
    return data


def test_every_public_name_imports_and_is_documented():
    text = DOC.read_text()
    public = [n for n in labelkit.__all__ if n != "__version__"]
    assert sorted(public) == sorted(labelkit._PUBLIC)  # __all__ and the lazy table name the same API
    assert {"find_label_issues", "knn_graph", "label_spreading", "Teacher", "Workspace"} <= set(public)
    for name in public:
        assert getattr(labelkit, name) is not None
        assert f"labelkit.{name}" in text, f"labelkit.{name} is not in docs/python-api.md"
        assert name in dir(labelkit)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        labelkit.nope  # noqa: B018


def test_import_labelkit_and_the_cli_load_no_torch():
    code = "import sys, labelkit, labelkit.cli; print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_docs_examples_run_as_written(pseudolabeled, monkeypatch):
    monkeypatch.chdir(pseudolabeled.parent)
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.DOTALL | re.MULTILINE)  # the page's code blocks
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {"data": "data"}, DOC.name, str(DOC), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 20 and result.failed == 0


def test_api_module_doctests_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_find_label_issues_is_confident_learning_in_cleanlabs_shape(rng):
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), labels] += 1.5
    probs /= probs.sum(axis=1, keepdims=True)
    labels[:6] = (labels[:6] + 1) % 3  # six flipped labels
    ours = noise.detect_label_issues(labels, probs, method="prune_by_class", score_method="normalized_margin")
    mask = labelkit.find_label_issues(labels, probs, filter_by="prune_by_class")
    ranked = labelkit.find_label_issues(labels, probs, filter_by="prune_by_class", return_indices_ranked_by="normalized_margin")
    assert mask.dtype == bool and mask.tolist() == ours.is_issue.tolist() and mask[:6].sum() >= 4
    assert ranked.tolist() == ours.ranked.tolist() and sorted(ranked.tolist()) == np.flatnonzero(mask).tolist()


def test_workspace_reads_a_folder_or_its_workspace_and_refuses_what_is_not_there(pseudolabeled, tmp_path):
    for path in (pseudolabeled, pseudolabeled / ".labelkit"):
        ws = labelkit.Workspace(path)
        assert ws.path == pseudolabeled / ".labelkit"
        assert ws.read("pseudolabels.parquet", columns=["id"]).column_names == ["id"]
    assert ws.read("samples").num_rows == 8
    with pytest.raises(MissingArtifactError, match=r"label_issues\.parquet not found in .*; run 'labelkit detect-noise .*' to make it"):
        ws.to_pandas("label_issues")
    with pytest.raises(BadInputError, match=r"must be an artifact inside the workspace"):
        ws.read("../labels")
    with pytest.raises(LabelkitError, match="no such workspace folder"):
        labelkit.Workspace(tmp_path / "nowhere")
    (pseudolabeled / ".labelkit" / "pseudolabels.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(LabelkitError, match=r"pseudolabels\.parquet: .*rebuild it"):
        ws.read("pseudolabels")
