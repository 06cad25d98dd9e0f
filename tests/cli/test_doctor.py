"""`labelkit doctor`: the JSON report, and exit 1 when the current config needs something missing."""

from __future__ import annotations

import json
import socket

from labelkit.cli import app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_json(runner, tmp_path):
    r = runner.invoke(app, ["doctor", str(tmp_path), "--json", "--no-network"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["needs"] == []
    assert {"labelkit", "packages", "devices", "faiss", "ray", "embedders", "network", "disk"} <= set(report)
    assert report["disk"]["path"] == str(tmp_path.resolve())
    assert report["network"]["reachable"] is None


def test_doctor_renders_for_people(runner):
    r = runner.invoke(app, ["doctor", "--no-network"])
    assert r.exit_code == 0, r.output
    assert "efficientnet-lite0" in r.stderr and "devices:" in r.stderr and "disk:" in r.stderr
    assert r.stdout == ""


def test_unreachable_ray_address_exits_1(runner, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _closed_port()
    r = runner.invoke(app, ["doctor", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--json", "--no-network"])
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["ray"]["reachable"] is False
    assert f"missing: ray cluster at 127.0.0.1:{port}" in r.stderr


def test_ray_address_from_the_environment(runner, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    r = runner.invoke(app, ["doctor", "--engine", "ray", "--json", "--no-network"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["ray"]["address"] == f"127.0.0.1:{port}"


def test_model_from_config_file_without_weights_exits_1(runner, tmp_path):
    cfg = tmp_path / "lk.toml"
    cfg.write_text('[embed]\nmodel = "clip:ViT-B-32/openai"\n')
    r = runner.invoke(app, ["doctor", "--config", str(cfg), "--json", "--no-network"])
    assert r.exit_code == 1
    [need] = json.loads(r.stdout)["needs"]
    assert need["what"] == "weights of clip:ViT-B-32/openai" and need["ok"] is False
    assert "--allow-download" in need["hint"]


def test_packaged_model_is_met(runner):
    r = runner.invoke(app, ["doctor", "--model", "efficientnet-lite0", "--device", "cpu", "--json", "--no-network"])
    assert r.exit_code == 0, r.output
    [need] = json.loads(r.stdout)["needs"]
    assert need["ok"] is True and need["detail"].endswith(".pth")
