"""labelkit/doctor.py: the report's schema, and which unmet needs make it not ok."""

from __future__ import annotations

import json
import socket

import pytest

from labelkit import doctor
from labelkit.doctor import Needs, diagnose

# key -> type of every top-level entry, and of the nested ones scripts read.
SCHEMA = {
    "labelkit": str, "python": str, "platform": str, "packages": dict, "devices": dict, "faiss": dict, "ray": dict,
    "embedders": list, "network": dict, "disk": dict, "needs": list, "ok": bool,
}
DEVICES = {"cuda": dict, "mps": bool, "cpu_cores": int, "cpu_cores_usable": int, "memory_gb": float}
FAISS = {"installed": bool, "gpu_build": bool, "gpus": int}
EMBEDDER = {"model": str, "present": bool, "detail": str}
NEED = {"what": str, "ok": bool, "detail": str, "hint": str}


@pytest.fixture(scope="module")
def report():
    return diagnose(Needs(), network=False)


def _check(obj: dict, schema: dict) -> None:
    for key, typ in schema.items():
        assert key in obj, key
        assert isinstance(obj[key], typ), (key, obj[key])


def test_schema(report, tmp_path):
    _check(report, SCHEMA)
    _check(report["devices"], DEVICES)
    _check(report["faiss"], FAISS)
    assert set(report["devices"]["cuda"]) == {"available", "torch_cuda", "devices"}
    assert report["faiss"]["installed"] is True
    # what --memory-budget auto gives a stage now: half the available memory (GiB -> GB), None where it cannot be read
    d = report["devices"]
    assert d["memory_budget_auto_gb"] is None or abs(d["memory_budget_auto_gb"] - d["memory_available_gb"] * 2**30 / 2e9) < 0.5
    assert {"torch", "numpy", "pyarrow", "pandas", "faiss-cpu", "ray", "open_clip_torch", "onnxruntime"} <= set(report["packages"])
    for entry in report["embedders"]:
        _check(entry, EMBEDDER)
    assert [e["model"] for e in report["embedders"][:3]] == ["efficientnet-lite0", "minilm", "pixels"]
    assert report["network"] == {"reachable": None, "probe": None, "detail": "not checked"}
    json.dumps(report)  # JSON-ready as it is


def test_nothing_needed_is_ok(report):
    assert report["needs"] == [] and report["ok"] is True


def test_packaged_weights_are_found(report):
    by_model = {e["model"]: e for e in report["embedders"]}
    assert by_model["efficientnet-lite0"]["present"] and by_model["efficientnet-lite0"]["weights"].endswith(".pth")
    assert by_model["minilm"]["present"]
    assert by_model["pixels"] == {"model": "pixels", "weights": None, "present": True, "detail": "no weights needed"}


def test_unreachable_ray_cluster_is_not_ok():
    with socket.socket() as s:  # a port nobody listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = diagnose(Needs(engine="ray", ray_address=f"127.0.0.1:{port}"), network=False)
    assert r["ray"]["reachable"] is False
    assert r["ok"] is False
    [installed, cluster] = r["needs"]
    assert installed["ok"] is True
    assert cluster["ok"] is False and "ray start --head" in cluster["hint"]


def test_reachable_ray_port_is_ok():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = diagnose(Needs(engine="ray", ray_address=f"ray://127.0.0.1:{s.getsockname()[1]}"), network=False)
    assert r["ray"]["reachable"] is True and r["ok"] is True


def test_ray_missing_says_how_to_install(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: None if name == "ray" else real(name))
    r = diagnose(Needs(engine="ray"), network=False)
    assert r["ray"]["installed"] is False and r["ok"] is False
    assert r["needs"] == [{"what": "ray installed", "ok": False, "detail": "ray is not installed", "hint": "pip install 'labelkit-ml[ray]'"}]


def test_missing_weights_and_device(tmp_path):
    r = diagnose(Needs(model="efficientnet-lite0", weights=str(tmp_path / "nope.pt"), device="cuda:7"), network=False)
    needs = {n["what"]: n for n in r["needs"]}
    assert needs["weights of efficientnet-lite0"]["ok"] is False
    assert needs["device cuda:7"]["ok"] is False  # no machine here has 8 GPUs
    assert r["ok"] is False


def test_clip_without_cached_weights_is_missing():
    entry = doctor.weights_of("clip:ViT-B-32/openai")
    assert entry["present"] is False and "--allow-download" in entry["detail"]


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001)), ("head", None), ("head:port", None),
])
def test_ray_endpoint(address, expected):
    assert doctor.ray_endpoint(address) == expected


def test_disk_of_a_folder_not_made_yet(tmp_path):
    d = doctor.disk_info(tmp_path / "data" / ".labelkit")
    assert d["path"] == str(tmp_path.resolve()) and d["free_gb"] > 0 and d["total_gb"] >= d["free_gb"]


def test_probe_closed_port_is_false():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, detail = doctor.probe("127.0.0.1", port, timeout=0.5)
    assert ok is False and f"127.0.0.1:{port}" in detail
