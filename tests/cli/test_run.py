"""`labelkit run` and `labelkit status` over the whole DAG."""

from __future__ import annotations

import json

from labelkit.cli import app


def test_run_slice_then_status(runner, digits):
    r = runner.invoke(app, ["run", str(digits), "--until", "pseudolabel", "--json"])
    assert r.exit_code == 0, r.output
    assert [s["stage"] for s in json.loads(r.stdout)["stages"]] == ["embed", "prototype", "pseudolabel"]
    states = {s["stage"]: s["state"] for s in json.loads(runner.invoke(app, ["status", str(digits), "--json"]).stdout)["stages"]}
    assert states["embed"] == states["prototype"] == states["pseudolabel"] == "done"
    assert states["detect-noise"] == "missing"
    # A second run skips everything that is up to date.
    r = runner.invoke(app, ["run", str(digits), "--until", "pseudolabel", "--json"])
    assert all(s["skipped"] for s in json.loads(r.stdout)["stages"])


def test_run_config_and_gate(runner, digits, tmp_path):
    cfg = tmp_path / "lk.toml"
    cfg.write_text("[detect-noise]\nprobs = \"knn\"\nfail_above = 0.01\n[pseudolabel]\nthreshold = 0.9\n")
    r = runner.invoke(app, ["run", str(digits), "--from", "embed", "--until", "detect-noise", "--config", str(cfg), "--json"])
    assert r.exit_code == 3  # the gate breached, after every stage ran
    stages = json.loads(r.stdout)["stages"]
    assert stages[-1]["stage"] == "detect-noise" and stages[-1]["probs"] == "knn"
    assert stages[2]["threshold"] == 0.9


def test_run_bad_stage_names(runner, digits):
    r = runner.invoke(app, ["run", str(digits), "--from", "embedd"])
    assert r.exit_code == 1 and "unknown stage 'embedd'" in r.stderr
    r = runner.invoke(app, ["run", str(digits), "--from", "detect-noise", "--until", "embed"])
    assert r.exit_code == 1 and "--from detect-noise comes after --until embed" in r.stderr
