"""embed --model auto chooses on evidence and the stages speak up when it is weak (issue 13)."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np

from labelkit.cli import app


def test_auto_scores_candidates_and_keeps_pixels_for_tiny_digits(runner, digits):
    r = runner.invoke(app, ["embed", str(digits), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    choice = s["model_choice"]
    assert set(choice["scores"]) >= {"pixels:8", "efficientnet-lite0"}
    assert choice["chosen"] == s["model"] == "pixels:8"
    assert choice["scores"]["pixels:8"]["score"] > choice["scores"]["efficientnet-lite0"]["score"]
    assert s["separation"]["knn_accuracy"] > 0.5 and s["warnings"] == []
    # Recorded for scripts and the report: manifest.json and the artifact's metadata.
    manifest = json.loads((digits / ".labelkit" / "manifest.json").read_text())
    assert "model_choice" in json.dumps(manifest)
    again = json.loads(runner.invoke(app, ["embed", str(digits), "--json"]).stdout)
    assert again["skipped"] and again["model_choice"]["chosen"] == "pixels:8"
    # A new unlabeled image leaves the scoring sample as it was: the choice is reused, not re-scored.
    from PIL import Image, ImageOps

    ImageOps.mirror(Image.open(digits / "unlabeled" / "digit_0000.png")).save(digits / "unlabeled" / "zz_new.png")
    third = json.loads(runner.invoke(app, ["embed", str(digits), "--json"]).stdout)
    assert not third["skipped"] and third["n_embedded"] == 1
    assert third["model_choice"]["reused"] and third["model_choice"]["chosen"] == "pixels:8"
    assert third["model_choice"]["scores"] == s["model_choice"]["scores"]
    # A changed label in the scoring sample scores the candidates again.
    first_labeled = sorted((digits / "0").iterdir())[0]
    first_labeled.rename(digits / "1" / first_labeled.name)
    fourth = json.loads(runner.invoke(app, ["embed", str(digits), "--json"]).stdout)
    assert fourth["model_choice"]["reused"] is False


def test_auto_picks_a_real_backbone_for_cifar_photos(runner, tmp_path, shared_data):
    src = shared_data / "cifar10-test-jpeg"
    rows = [r for r in csv.DictReader(open(src / "index.csv")) if r["label_name"] in ("airplane", "frog", "ship", "deer")]
    picked = {}
    for r in rows:  # the first 12 photos of each of 4 classes, all in the first zip
        if r["zip_file"] == "test.part1_of_3.zip" and len(picked.setdefault(r["label_name"], [])) < 12:
            picked[r["label_name"]].append(r)
    data = tmp_path / "photos"
    with zipfile.ZipFile(src / "test.part1_of_3.zip") as z:
        for name, members in picked.items():
            (data / name).mkdir(parents=True)
            for r in members:
                (data / name / r["path"].rsplit("/", 1)[1]).write_bytes(z.read(r["path"]))
    r = runner.invoke(app, ["embed", str(data), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    scores = s["model_choice"]["scores"]
    assert s["model"] == "efficientnet-lite0", scores
    assert scores["efficientnet-lite0"]["score"] > scores["pixels:32"]["score"] + 0.1


def _vectors_manifest(folder, vectors, labels):
    folder.mkdir()
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "embedding"])
        for i, (v, y) in enumerate(zip(vectors, labels)):
            w.writerow([f"s{i}", y, json.dumps([round(float(a), 5) for a in v])])
    return folder


def test_an_embedding_that_cannot_separate_the_classes_warns_in_every_stage_that_sees_it(runner, tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    labels = [f"c{i % 5}" if i < 150 else "" for i in range(n)]  # labels unrelated to the vectors
    data = _vectors_manifest(tmp_path / "noise", rng.normal(size=(n, 16)), labels)
    r = runner.invoke(app, ["run", str(data), "--until", "detect-noise", "--json"])
    assert r.exit_code == 0, r.output
    stages = {s["stage"]: s for s in json.loads(r.stdout)["stages"]}
    codes = {st: [w["code"] for w in s["warnings"]] for st, s in stages.items()}
    assert "poor_separation" in codes["embed"]
    assert "weak_evidence" in codes["detect-noise"]
    # Weak evidence: the label flags are cut to the review budget (5% of 150), the rest stay ranked.
    dn = stages["detect-noise"]
    assert dn["weak_evidence"] and dn["issues_by_type"].get("label", 0) <= 8 < dn["n_label_candidates"]
    # For CI: --strict turns the warnings into exit 4, also when every stage is up to date
    # (their stored summaries keep the warnings), and they are printed in yellow with a hint.
    strict = runner.invoke(app, ["run", str(data), "--until", "detect-noise", "--strict"])
    assert strict.exit_code == 4, strict.output
    assert "warning: [embed] the embedding (precomputed) separates the labeled classes poorly" in strict.stderr
    assert "try: " in strict.stderr


def test_separable_vectors_raise_no_warning(runner, tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    y = np.arange(n) % 3
    vecs = np.eye(3, 8)[y] * 6 + rng.normal(size=(n, 8))
    labels = [f"c{c}" if i < 120 else "" for i, c in enumerate(y)]
    data = _vectors_manifest(tmp_path / "clean", vecs, labels)
    r = runner.invoke(app, ["run", str(data), "--until", "detect-noise", "--json"])
    assert r.exit_code == 0, r.output
    for s in json.loads(r.stdout)["stages"]:
        assert s["warnings"] == [], (s["stage"], s["warnings"])
