"""`labelkit detect-noise` through the CLI: digits end to end, --pred-probs, --dynamics, CI gates, bad input."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelkit.cli import app
from labelkit.workspace import file_fingerprint
from tests.conftest import ROOT, write_csv

COLUMNS = ["id", "given_label", "suggested_label", "label_quality", "is_issue", "issue_type", "rank"]


def _truth():
    return pd.read_csv(ROOT / "examples" / "digits-truth.csv")


def test_digits_finds_flipped_labels_and_runs_embed_first(runner, digits):
    r = runner.invoke(app, ["detect-noise", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [u["stage"] for u in out["upstream"]] == ["embed"]
    assert "embeddings.parquet was missing" in out["upstream"][0]["reason"]
    issues = pq.read_table(digits / ".labelkit" / "label_issues.parquet").to_pandas()
    assert list(issues.columns) == COLUMNS
    assert len(issues) == 179 and issues["rank"].tolist() == list(range(1, 180))
    flipped = set(_truth().query("flipped == 1")["path"])
    found = set(issues.loc[issues["is_issue"], "id"]) & flipped
    assert len(found) >= 0.7 * len(flipped)  # recall
    # The top of the ranking is mostly real errors.
    assert len(set(issues["id"][:10]) & flipped) >= 6
    assert out["n_issues"] == int(issues["is_issue"].sum())
    assert out["issue_rate"] == round(out["n_issues"] / 179, 4)  # what --fail-above compares
    assert len(found) >= 0.8 * out["n_issues"]  # precision: 16 of 17 with the propagation source (16 of 25 without)
    # --probs auto computed every source (propagation: 1,618 samples are unlabeled) and kept the one
    # more accurate on the given labels
    choice = out["probs_choice"]
    assert choice["requested"] == "auto" and choice["by"] == "accuracy" and set(choice["scores"]) == {"crossval", "knn", "propagation"}
    assert choice["chosen"] == out["probs"] == max(choice["scores"], key=lambda k: choice["scores"][k]["accuracy"])
    assert out["dynamics"] is None


def test_second_run_is_skipped_but_gates_still_apply(runner, digits, tmp_path):
    assert runner.invoke(app, ["detect-noise", str(digits)]).exit_code == 0
    review = tmp_path / "queue.csv"
    r = runner.invoke(app, ["detect-noise", str(digits), "--fail-above", "0.01", "--export-review", str(review)])
    assert "detect-noise: up to date, skipping" in r.stderr
    assert r.exit_code == 3
    assert "is above --fail-above 1.00%" in r.stderr
    q = pd.read_csv(review)
    assert list(q.columns) == ["rank", "id", "source", "given_label", "suggested_label", "label_quality", "issue_type"]
    assert q["rank"].is_monotonic_increasing and len(q) > 0
    r = runner.invoke(app, ["detect-noise", str(digits), "--fail-above", "0.9"])
    assert r.exit_code == 0


def test_pred_probs_npy_needs_only_labels(runner, tmp_path):
    # Three classes; sample 3 is labeled 'a' but the model is sure it is 'c'.
    write_csv(tmp_path, "id,label\n0,a\n1,a\n2,a\n3,a\n4,b\n5,b\n6,b\n7,c\n8,c\n9,c\n")
    p = np.array([[.9, .05, .05]] * 3 + [[.02, .03, .95]] + [[.05, .9, .05]] * 3 + [[.05, .05, .9]] * 3)
    np.save(tmp_path / "p.npy", p)
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy"), "--json"])
    assert r.exit_code == 0, r.output
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert issues.loc[issues["is_issue"], "id"].tolist() == ["3"]
    assert issues.iloc[0]["suggested_label"] == "c"
    assert not (tmp_path / ".labelkit" / "embeddings.parquet").exists()


def test_pred_probs_parquet_by_id(runner, tmp_path):
    write_csv(tmp_path, "id,label\nx,a\ny,b\nz,b\nw,a\n")
    pd.DataFrame({"id": ["w", "z", "y", "x"], "a": [0.9, 0.1, 0.2, 0.1], "b": [0.1, 0.9, 0.8, 0.9]}).to_parquet(tmp_path / "p.parquet")
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.parquet"), "--filter-by", "predicted_neq_given", "--json"])
    assert r.exit_code == 0, r.output
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert issues.loc[issues["is_issue"], "id"].tolist() == ["x"]


def test_issue17_cached_pred_probs_fingerprint_reruns_on_a_same_size_change_and_skips_a_touch(runner, tmp_path, monkeypatch):
    from labelkit import workspace

    monkeypatch.setenv("LABELKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(workspace, "CACHED_FINGERPRINT_BYTES", 1)  # every file's fingerprint cached (once 0.2 s old)
    monkeypatch.setattr(workspace, "RACY_NS", 200_000_000)
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data, "id,label\n0,a\n1,a\n2,a\n3,a\n4,b\n5,b\n6,b\n7,c\n8,c\n9,c\n")
    p = np.array([[.9, .05, .05]] * 3 + [[.02, .03, .95]] + [[.05, .9, .05]] * 3 + [[.05, .05, .9]] * 3)
    probs = tmp_path / "p.npy"
    np.save(probs, p)
    time.sleep(0.3)
    run = lambda: json.loads(runner.invoke(app, ["detect-noise", str(data), "--pred-probs", str(probs), "--json"]).stdout)  # noqa: E731
    assert run()["n_issues"] == 1
    assert list((tmp_path / "cache" / "fingerprints").glob("*.json"))  # the fingerprint was cached
    assert run()["reason"] == "up to date"
    st = probs.stat()
    q = p.copy()
    q[3] = [.95, .03, .02]  # sample 3 now agrees with its label 'a': same shape, same file size
    np.save(probs, q)
    os.utime(probs, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime: only the ctime tells
    assert probs.stat().st_size == st.st_size
    res = run()
    assert res["reason"] == "input pred_probs changed" and res["n_issues"] == 0
    time.sleep(0.3)
    os.utime(probs)  # touched: same bytes
    assert run()["reason"] == "up to date"


@pytest.mark.parametrize(
    "probs, message",
    [
        (np.ones((3, 2)) / 2, "--pred-probs p.npy: 3 rows, but there are 4 samples (4 labeled)"),
        (np.ones((4, 3)) / 3, "--pred-probs p.npy: expected shape (n, 2)"),
        (np.full((4, 2), np.nan), "probabilities contain NaN"),
    ],
)
def test_bad_pred_probs(runner, tmp_path, probs, message):
    write_csv(tmp_path, "id,label\nx,a\ny,b\nz,b\nw,a\n")
    np.save(tmp_path / "p.npy", probs)
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy")])
    assert r.exit_code == 1
    assert message in r.stderr
    assert not (tmp_path / ".labelkit" / "label_issues.parquet").exists()


def test_no_labels_is_bad_input(runner, tmp_path):
    write_csv(tmp_path, 'id,embedding,label\na,"[1, 0]",\nb,"[0, 1]",\n')
    r = runner.invoke(app, ["detect-noise", str(tmp_path)])
    assert r.exit_code == 1
    assert "detect-noise needs labels" in r.stderr


def test_real_mnist_pred_probs_finds_validated_errors(runner, tmp_path, shared_data):
    base = shared_data / "cleanlab-label-errors"
    labels = np.load(base / "original_test_labels" / "mnist_test_set_original_labels.npy")
    probs = np.load(base / "cross_validated_predicted_probabilities" / "mnist_test_set_pyx.npy")
    ds = tmp_path / "mnist"
    ds.mkdir()
    pd.DataFrame({"id": np.arange(len(labels)).astype(str), "label": labels.astype(str)}).to_csv(ds / "labels.csv", index=False)
    np.save(ds / "p.npy", probs)
    r = runner.invoke(app, ["detect-noise", str(ds), "--pred-probs", str(ds / "p.npy"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_issues"] == 15  # cleanlab 2.9's prune_by_noise_rate count on the same file
    validated = json.loads((base / "validated_label_errors.json").read_text())["mnist_test_set"]
    issues = pq.read_table(ds / ".labelkit" / "label_issues.parquet").to_pandas()
    flagged = set(issues.loc[issues["is_issue"], "id"].astype(int))
    assert len(flagged & set(validated["validated_error_indices"])) == 7


# -- --dynamics: a second pass after distill ---------------------------------------------------


def test_dynamics_without_a_student_says_run_distill_first(runner, digits):
    r = runner.invoke(app, ["detect-noise", str(digits), "--dynamics"])
    assert r.exit_code == 1
    assert "student/dynamics.parquet not found; run 'labelkit distill" in r.stderr
    assert not (digits / ".labelkit" / "label_issues.parquet").exists()


def _write_dynamics(path, issues: pd.DataFrame, hard: dict[str, str]) -> None:
    """Confident, steady dynamics for every analysed sample; ``hard`` ids (-> their label) hard to learn."""
    labels = issues.set_index("id")["given_label"].to_dict()
    labels.update(hard)
    ids = list(labels)
    low = np.isin(ids, list(hard))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "id": ids + ["pseudo.png"], "label": [labels[i] for i in ids] + ["0"],
        "confidence": np.r_[np.where(low, 0.02, 0.9), 0.01].astype(np.float32),
        "variability": np.r_[np.where(low, 0.01, 0.1), 0.01].astype(np.float32),
        "correctness": np.zeros(len(ids) + 1, np.float32), "is_pseudo": [False] * len(ids) + [True],
    }).to_parquet(path)


def test_dynamics_second_pass_adds_hard_to_learn_samples_and_is_kept_by_the_pipeline(runner, digits, tmp_path):
    ws = digits / ".labelkit"
    toml = tmp_path / "lk.toml"
    toml.write_text('[detect-noise]\nprobs = "knn"\n')  # the fast source, for every call below

    def invoke(*args):
        return runner.invoke(app, [*args[:1], str(digits), *args[1:], "--config", str(toml)])

    assert invoke("detect-noise").exit_code == 0
    first = pq.read_table(ws / "label_issues.parquet").to_pandas()
    clean = first.loc[~first["is_issue"] & first["issue_type"].isna()].reset_index(drop=True)
    a, b, c = clean["id"][:3]
    other = next(x for x in "0123456789" if x != clean["given_label"][2])
    # a and b: the student never learned their given label; c's row follows another label (ignored)
    dyn = ws / "student" / "dynamics.parquet"
    _write_dynamics(dyn, first, {a: clean["given_label"][0], b: clean["given_label"][1], c: other})

    r = invoke("detect-noise", "--dynamics", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["dynamics"] == {"file": str(dyn), "n_with_dynamics": 178, "n_hard_to_learn": 2, "n_set_aside": 0}
    issues = pq.read_table(ws / "label_issues.parquet").to_pandas().set_index("id")
    assert issues.loc[[a, b], "issue_type"].tolist() == ["dynamics", "dynamics"] and issues.loc[[a, b], "is_issue"].all()
    assert not issues.loc[c, "is_issue"]
    # quality = min(p_y, 1 - (1 - 0.02)(1 - 0.01 / 0.5) = 0.0396)
    assert (issues.loc[[a, b], "label_quality"] <= 0.0396 + 1e-6).all()
    assert out["issues_by_type"]["dynamics"] == 2 and out["n_issues"] == int(first["is_issue"].sum()) + 2
    manifest = json.loads((ws / "manifest.json").read_text())["stages"]["detect-noise"]
    assert manifest["params"]["dynamics"] is True
    assert manifest["params"]["dynamics_fingerprint"] == file_fingerprint(dyn)

    r = invoke("detect-noise", "--dynamics")
    assert "detect-noise: up to date, skipping" in r.stderr
    _write_dynamics(dyn, first, {a: clean["given_label"][0]})  # the student retrained: b is learned now
    r = invoke("detect-noise", "--dynamics", "--json")
    assert json.loads(r.stdout)["reason"] == "dynamics.parquet changed"
    assert json.loads(r.stdout)["dynamics"]["n_hard_to_learn"] == 1

    # The pipeline never reads the dynamics (distill reads label_issues): it keeps the second pass.
    r = invoke("run", "--from", "detect-noise", "--until", "detect-noise", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stages"][0]["skipped"] is True
    assert pq.read_table(ws / "label_issues.parquet").to_pandas().set_index("id").loc[a, "issue_type"] == "dynamics"
    states = {s["stage"]: s["state"] for s in json.loads(invoke("status", "--json").stdout)["stages"]}
    assert states["detect-noise"] == "done"
    # Asking for the first pass by hand reruns it.
    r = invoke("detect-noise", "--json")
    assert json.loads(r.stdout)["reason"] == "parameters changed" and json.loads(r.stdout)["dynamics"] is None


def test_dynamics_file_with_labels_the_fixmatch_filter_set_aside(runner, tmp_path):
    # Sample 3 is labeled 'b', the model agrees and the student memorised it, but its strong views
    # said otherwise and distill's label filter set it aside: an issue, its quality capped by them.
    write_csv(tmp_path, "id,label\n0,a\n1,a\n2,b\n3,b\n4,b\n")
    np.save(tmp_path / "p.npy", np.array([[.9, .1], [.8, .2], [.2, .8], [.2, .8], [.1, .9]]))
    dyn = tmp_path / "dyn.parquet"
    pd.DataFrame({"id": ["0", "1", "2", "3"], "label": ["a", "a", "b", "b"], "confidence": [0.9, 0.8, 0.9, 0.95],
                  "variability": [0.1, 0.1, 0.05, 0.02], "is_pseudo": [False] * 4, "set_aside": [False, False, False, True],
                  "view_confidence": np.array([0.9, 0.85, np.nan, 0.3], np.float32)}).to_parquet(dyn)
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy"), "--dynamics-file", str(dyn), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["dynamics"] == {"file": str(dyn), "n_with_dynamics": 4, "n_hard_to_learn": 0, "n_set_aside": 1}
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas().set_index("id")
    assert issues.index[issues["is_issue"]].tolist() == ["3"] and issues.loc["3", "issue_type"] == "dynamics"
    assert issues.loc["3", "label_quality"] == pytest.approx(0.3, abs=1e-6)


def test_dynamics_file_with_pred_probs(runner, tmp_path):
    # Sample 2 is labeled 'b' and the model agrees, but the student never learned it: dynamics flag it.
    write_csv(tmp_path, "id,label\n0,a\n1,a\n2,b\n3,b\n4,b\n")
    np.save(tmp_path / "p.npy", np.array([[.9, .1], [.8, .2], [.3, .7], [.2, .8], [.1, .9]]))
    dyn = tmp_path / "dyn.parquet"
    pd.DataFrame({"id": ["0", "1", "2", "3"], "label": ["a", "a", "b", "b"], "confidence": [0.9, 0.8, 0.1, 0.7],
                  "variability": [0.1, 0.1, 0.05, 0.2], "is_pseudo": [False] * 4}).to_parquet(dyn)
    args = ["detect-noise", str(tmp_path), "--pred-probs", str(tmp_path / "p.npy"), "--dynamics-file", str(dyn), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["dynamics"] == {"file": str(dyn), "n_with_dynamics": 4, "n_hard_to_learn": 1, "n_set_aside": 0}
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert issues.loc[issues["is_issue"], "id"].tolist() == ["2"] and issues["issue_type"][0] == "dynamics"
    # quality = min(0.7, 1 - (1 - 0.1)(1 - 0.05 / 0.5)) = 0.19
    assert issues["label_quality"][0] == pytest.approx(0.19, abs=1e-6)
    pd.DataFrame({"id": ["0"], "confidence": [0.5]}).to_parquet(dyn)
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert f"--dynamics {dyn}: cannot read id, label, confidence, variability, is_pseudo" in r.stderr


@pytest.mark.slow
def test_dynamics_workflow_with_a_real_student_settles(runner, digits):
    """detect-noise, distill, detect-noise --dynamics, then `labelkit run` retrains once and settles."""
    assert runner.invoke(app, ["detect-noise", str(digits)]).exit_code == 0
    assert runner.invoke(app, ["distill", str(digits), "--epochs", "20"]).exit_code == 0
    r = runner.invoke(app, ["detect-noise", str(digits), "--dynamics", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["dynamics"]["n_with_dynamics"] > 100
    cfg = digits / "lk.toml"
    cfg.write_text("[distill]\nepochs = 20\n")
    stages = json.loads(runner.invoke(app, ["run", str(digits), "--until", "distill", "--config", str(cfg), "--json"]).stdout)["stages"]
    assert {s["stage"]: s["skipped"] for s in stages} == {"embed": True, "prototype": True, "pseudolabel": True, "detect-noise": True, "distill": False}
    stages = json.loads(runner.invoke(app, ["run", str(digits), "--until", "distill", "--config", str(cfg), "--json"]).stdout)["stages"]
    assert all(s["skipped"] for s in stages)


def test_auto_skips_propagation_when_every_sample_is_labeled_but_it_can_be_asked_for(runner, tmp_path):
    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(3, 6)
    y = np.repeat(np.arange(3), 12)
    x = centres[y] + rng.normal(size=(36, 6))
    given = y.copy()
    given[[0, 13]] = [1, 2]  # two flipped labels
    rows = "".join(f'{i},"{json.dumps(v.round(4).tolist())}",{"abc"[g]}\n' for i, (v, g) in enumerate(zip(x, given)))
    write_csv(tmp_path, "id,embedding,label\n" + rows)
    out = json.loads(runner.invoke(app, ["detect-noise", str(tmp_path), "--json"]).stdout)
    assert set(out["probs_choice"]["scores"]) == {"crossval", "knn"}  # nothing unlabeled: propagation sees what knn sees
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--probs", "propagation", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["probs"] == "propagation" and set(out["probs_choice"]["scores"]) == {"propagation"}
    issues = pq.read_table(tmp_path / ".labelkit" / "label_issues.parquet").to_pandas()
    assert {"0", "13"} <= set(issues.loc[issues["is_issue"], "id"].astype(str))


def test_issue15_pseudolabel_propagation_options_reach_the_propagation_source(runner, tmp_path, monkeypatch):
    """A TOML [pseudolabel] gamma (and the other propagation options) reaches detect-noise's
    propagation source, and changing it reruns detect-noise (issue 15)."""
    from labelkit import pseudolabel

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    x = 4.0 * np.eye(3, 6)[y] + rng.normal(size=(36, 6))
    labels = ["abc"[c] if i % 2 == 0 else "" for i, c in enumerate(y)]  # half unlabeled
    write_csv(tmp_path, "id,embedding,label\n" + "".join(f'{i},"{json.dumps(v.round(4).tolist())}",{g}\n' for i, (v, g) in enumerate(zip(x, labels))))
    seen = []
    real = pseudolabel.heldout_calibration

    def spy(*args, options, **kwargs):
        seen.append(options)
        return real(*args, options=options, **kwargs)

    monkeypatch.setattr(pseudolabel, "heldout_calibration", spy)
    toml = tmp_path / "lk.toml"
    toml.write_text('[pseudolabel]\ngamma = 1.5\nalpha = 0.8\none_way_weight = 0.3\n[detect-noise]\nprobs = "propagation"\nk = 6\n')
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--config", str(toml), "--json"])
    assert r.exit_code == 0, r.output
    assert [(o.gamma, o.alpha, o.one_way_weight, o.n_neighbors) for o in seen] == [(1.5, 0.8, 0.3, 6)]
    record = json.loads((tmp_path / ".labelkit" / "manifest.json").read_text())["stages"]["detect-noise"]
    assert record["params"]["propagation"]["gamma"] == 1.5
    toml.write_text(toml.read_text().replace("gamma = 1.5", "gamma = 2.0"))
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--config", str(toml), "--json"])
    assert json.loads(r.stdout)["reason"] == "parameters changed" and seen[-1].gamma == 2.0
    r = runner.invoke(app, ["detect-noise", str(tmp_path), "--config", str(toml), "--json"])
    assert json.loads(r.stdout)["skipped"] is True and len(seen) == 2


def test_float16_embeddings_flag_the_float32_runs_issues(runner, digits, tmp_path):
    """detect-noise reads --dtype float16 embeddings as float16 (no float32 copy); the issues agree."""
    import shutil

    half = tmp_path / "half"
    shutil.copytree(digits, half)
    assert runner.invoke(app, ["embed", str(half), "--dtype", "float16"]).exit_code == 0
    r16 = runner.invoke(app, ["detect-noise", str(half), "--json"])
    r32 = runner.invoke(app, ["detect-noise", str(digits), "--json"])
    assert r16.exit_code == r32.exit_code == 0, r16.output + r32.output
    a = set(pq.read_table(half / ".labelkit" / "label_issues.parquet").column("id").to_pylist())
    b = set(pq.read_table(digits / ".labelkit" / "label_issues.parquet").column("id").to_pylist())
    assert b and len(a & b) >= 0.9 * max(len(a), len(b))
