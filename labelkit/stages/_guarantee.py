"""The summary entries of an error guarantee (``--max-error``), shared by the multi-class and the
multi-label pseudolabel stages: the same keys, so the exit-3 gate and the report read both."""

from __future__ import annotations

from typing import Any

import numpy as np

from labelkit import health
from labelkit.guarantee import Certificate


def guarantee_summary(c: Certificate, *, target: float, confidence: float, accepted: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """``{"guarantee": {...}, "certified": bool, "error_bound": float | None}`` for a summary.

    ``accepted`` and ``scores`` are the decided rows' acceptance and the scores the threshold was
    applied to (``guarantee.threshold`` is the lowest accepted score).
    """
    d = c.to_dict()
    could = {"error_bound": d["best_bound"], "coverage_heldout": d["best_coverage"]}
    g = {"certified": c.certified, "target": target, "confidence": confidence, "error_bound": d["error_bound"],
         "threshold": float(scores[accepted].min()) if accepted.any() else None,
         "coverage": round(float(accepted.mean()), 4) if accepted.size else None,
         "coverage_heldout": round(c.coverage, 4), "n_calibration": c.n_calibration, "method": c.method, "could_certify": could}
    pct = f"{confidence:.0%}"
    if c.certified:
        g["message"] = (f"certified: error among accepted pseudo-labels <= {c.error_bound:.2%} (target {target:.2%}) "
                        f"at {pct} confidence, from {c.n_calibration} held-out labeled samples")
    elif d["best_bound"] is not None:
        g["message"] = (f"cannot certify error <= {target:.2%} at {pct} confidence from {c.n_calibration} held-out labeled samples: "
                        f"nothing accepted; they could certify error <= {d['best_bound']:.2%} (accepting the most confident "
                        f"{d['best_coverage']:.0%} of them); label more samples or raise --max-error")
    else:
        g["message"] = (f"cannot certify error <= {target:.2%} at {pct} confidence: no held-out labeled sample to certify on; "
                        "nothing accepted; label more samples")
    return {"guarantee": g, "certified": c.certified, "error_bound": d["error_bound"]}


def uncertified_warning(guarantee: dict[str, Any]) -> dict[str, str]:
    """The ``uncertified`` warning, from the summary's ``guarantee`` entry."""
    return health.warning("uncertified", guarantee["message"],
                          "label more samples (the bound tightens with the held-out count), or raise --max-error / lower --error-confidence")
