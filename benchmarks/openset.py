"""Error-guaranteed acceptance, open-set rejection and new-class discovery on real embeddings.

    python benchmarks/openset.py                       # everything below (~40 min on the shared 2 cores)
    python benchmarks/openset.py --part guarantee --datasets digits --splits 5
    python benchmarks/openset.py --table               # print the tables from the saved JSON lines

Data: examples/digits (1,797 scikit-learn digits, embedded once with ``labelkit embed`` into
benchmarks/results/openset/digits-ws: auto picks pixels:8), and the cached real-data workspaces of
benchmarks/realdata.py: BANKING77 test (3,080 queries, 77 intents, minilm) and the CIFAR-10 test
photos' fixed 2,000-row subsample (efficientnet-lite0), under benchmarks/results/realdata (run
``python benchmarks/realdata.py --quick`` once to make them). True labels from
examples/digits-truth.csv and benchmarks/realdata_data.py.

Every run scores exactly as ``labelkit pseudolabel`` does with its defaults: the prototype
stage's recipe (``build_prototypes``) then the pseudolabel stage's compute (``teach``: seed
cleaning, held-out calibration, the ensemble; :class:`labelkit.teacher.Teacher`), on the kNN
graph of the embeddings (k=10).

Parts (each split draws its labels with ``realdata_data.given_labels(y, fraction, 0, seed)``):

- ``guarantee``: per dataset and label fraction, ``--splits`` (default 20) random splits. The
  certificate (targets 0.02 and 0.05 at confidence 0.9) is made as the stage makes it
  (:func:`labelkit.guarantee.accept_pseudolabels` with its defaults: the held-out labeled rows,
  i.e. the calibration folds plus the seeds seed cleaning dropped, in confidence-rank space, novel
  rows rejected); also the naive variant that certifies raw confidence thresholds on the same
  rows and applies them to the final confidences (``raw_*``). The realised error of the
  accepted unlabeled pseudo-labels against the truth, the share of splits where it exceeds the
  target (must be at most 1 - confidence, up to the noise of a finite pool), and the coverage,
  against the fixed 0.95 threshold (the default).
- ``closed``: every class labeled (``--seeds`` splits per dataset and fraction): the fixed
  threshold's coverage and accuracy of accepted pseudo-labels with and without rejecting the
  samples judged novel at ``reject_rate`` 0.01 / 0.05 / 0.1 (novelty as the stage computes it:
  distances plus the teacher's held-out confidence).
- ``openset``: BANKING77 with a fifth of its intents (15 of 77, random per seed) never labeled,
  CIFAR-10 with three classes never labeled; 50% of each seen class labeled. AUROC and FPR at 95%
  TPR of ``novelty`` (as the stage computes it; also its distances alone) for the unlabeled samples of unseen classes against the unlabeled samples of
  seen ones, against one minus the maximum softmax probability of a logistic regression
  (scikit-learn, max_iter=1000) fitted on the labeled part, and against one minus the
  pseudo-label confidence; the fixed-threshold accepted pseudo-labels' precision (unseen-class
  samples counted wrong) and coverage with and without rejection.
- ``discovery`` (in the open-set runs): the unlabeled samples judged novel are clustered by
  :func:`labelkit.discovery.discover_classes` (number of new classes estimated); Hungarian accuracy
  over every unlabeled sample of an unseen class (a sample not clustered counts as wrong), the
  error in the estimated class count, against spherical k-means (``labelkit.knn.kmeans``) on the
  same candidates given the true count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import realdata_data as rd  # noqa: E402
from labelkit import artifacts, knn, thresholds  # noqa: E402
from labelkit.config import PrototypeConfig, PseudolabelConfig  # noqa: E402
from labelkit.discovery import discover_classes  # noqa: E402
from labelkit.guarantee import accept_pseudolabels, certify_threshold, heldout_losses  # noqa: E402
from labelkit.novelty import novelty_scores  # noqa: E402
from labelkit.teacher import Teacher  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "openset.jsonl"
TARGETS = (0.02, 0.05)
DELTA = 0.1
RATES = (0.01, 0.05, 0.1)
FRACTIONS = {"digits": (0.1, 0.5), "banking77": (0.25, 0.5), "cifar10": (0.25, 0.5), "cifar10-10k": (0.1,)}


def load(name: str):
    """(vectors (N, D), true labels (N,), classes, class-name embeddings or None)."""
    if name == "digits":
        ws = RESULTS / "openset" / "digits-ws"
        if not (ws / "embeddings.parquet").exists():
            from typer.testing import CliRunner

            from labelkit.cli import app

            r = CliRunner().invoke(app, ["embed", str(ROOT / "examples" / "digits"), "--out", str(ws)])
            if r.exit_code:
                raise SystemExit(r.output)
        ids, x = artifacts.read_embeddings(ws / "embeddings.parquet")
        truth = pd.read_csv(ROOT / "examples" / "digits-truth.csv").set_index("path")
        return np.asarray(x, np.float32), truth.loc[ids, "true_label"].to_numpy(np.int64), [str(c) for c in range(10)], None
    if name == "cifar10-10k":  # the whole CIFAR-10 test set: a pool of thousands, as users have
        ws = RESULTS / "realdata" / "cifar10-full-efficientnet-lite0"
        ids, x = artifacts.read_embeddings(ws / ".labelkit" / "embeddings.parquet")
        lab = pd.read_csv(ws / "labels.csv", dtype={"id": str}).set_index("id").loc[list(ids), "label"]
        classes = sorted(lab.unique())
        return np.asarray(x, np.float32), lab.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64), classes, None
    folder = {"banking77": "banking77-full", "cifar10": "cifar10-n2000"}[name]
    ws = RESULTS / "realdata" / folder / ".labelkit"
    src = rd.load(name)
    ids, x = artifacts.read_embeddings(ws / "embeddings.parquet")
    y = src.y[np.array([int(i) for i in ids])]
    text = None
    if (ws / "class_embeddings.parquet").exists():
        t = artifacts.read_table(ws / "class_embeddings.parquet")
        names = t.column("class").to_pylist()
        v = np.asarray(t.column("embedding").to_pylist(), np.float32)
        text = v[[names.index(c) for c in src.classes]]
    return np.asarray(x, np.float32), y, src.classes, text


def score(x, given, k_classes, graph, text, *, max_error=None):
    """The prototype and pseudolabel stages' compute with their defaults (the teacher): (result, dropped seeds).

    With ``max_error`` (any value: it changes how the rows are scored, not the scores) each
    unlabeled row is scored by one calibration fold's run, as ``pseudolabel --max-error`` does.
    """
    t = Teacher(pseudolabel=PseudolabelConfig(max_error=max_error), prototype=PrototypeConfig()).fit(x, given, n_classes=k_classes, graph=graph,
                                                                                                    text=text)
    return t.result_, t.seeds_dropped_


def novelty_of(x, given, k_classes, r, dropped, rate):
    """Novelty as the pseudolabel stage computes it: distances plus the teacher's held-out confidence."""
    return novelty_scores(x, given, k_classes, reject_rate=rate, confidence=r.confidence, reference=r.heldout | dropped)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(np.r_[pos, neg])
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def fpr_at_tpr(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> float:
    cut = np.quantile(pos, 1 - tpr)
    return float((neg >= cut).mean())


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Best one-to-one match of predicted clusters (-1 = none, always wrong) to true classes."""
    from scipy.optimize import linear_sum_assignment

    clusters, classes = np.unique(pred[pred >= 0]), np.unique(truth)
    if clusters.size == 0:
        return 0.0
    m = np.array([[np.sum((pred == c) & (truth == t)) for t in classes] for c in clusters])
    r, c = linear_sum_assignment(-m)
    return float(m[r, c].sum() / truth.size)


# -- parts ------------------------------------------------------------------------------------


def run_guarantee(name, x, y, classes, text, graph, fractions, splits, emit, *, baseline=True, first_split=0, dump=None):
    k = len(classes)
    for frac in fractions:
        for seed in range(first_split, first_split + splits):
            t0 = time.perf_counter()
            given, _ = rd.given_labels(y, frac, 0.0, seed, k)
            unl = np.flatnonzero(given < 0)
            # As `pseudolabel --max-error` scores: each unlabeled row by one calibration fold's run.
            r, dropped = score(x, given, k, graph, text, max_error=TARGETS[0])
            right = r.label[unl] == y[unl]
            rec = {"part": "guarantee", "scoring": "fold", "dataset": name, "fraction": frac, "seed": seed, "n_labeled": int((given >= 0).sum()),
                   "n_calibration": int((r.heldout | dropped).sum()), "n_unlabeled": int(unl.size),
                   "fold_accuracy": float(right.mean())}
            for t in TARGETS:
                a = accept_pseudolabels(x, given, k, r, dropped, unl, reject_novel=True, novelty_rate=0.05, max_error=t, error_confidence=1 - DELTA)
                c = a.certificate
                if dump is not None and t == TARGETS[0]:  # what a certificate needs, to compare procedures offline
                    dump.mkdir(parents=True, exist_ok=True)
                    novel = novelty_of(x, given, k, r, dropped, 0.05).novel  # as accept_pseudolabels judges every row
                    np.savez_compressed(dump / f"{name}-{frac:g}-{seed}.npz", label=r.label, confidence=r.confidence, heldout=r.heldout,
                                        dropped=dropped, given=given, truth=y, novel=novel)
                rec[f"target_{t}"] = {"certified": c.certified, "error_bound": c.to_dict()["error_bound"], "best_bound": c.to_dict()["best_bound"],
                                      "coverage": float(a.accepted.mean()), "error": float(1 - right[a.accepted].mean()) if a.accepted.any() else None}
            if baseline:
                # The default run (unlabeled rows scored on every label), its fixed 0.95 threshold, and the
                # naive variant: the held-out certificate applied to those sharper confidences as they are.
                r0, dropped0 = score(x, given, k, graph, text)
                s, loss = heldout_losses(r0.label, r0.confidence, given, r0.heldout, dropped0)
                conf, right0 = r0.confidence[unl], r0.label[unl] == y[unl]
                rec["accuracy"] = float(right0.mean())
                fixed = thresholds.accept(r0.probs[unl], "fixed", 0.95)
                rec["fixed"] = {"coverage": float(fixed.mean()), "error": float(1 - right0[fixed].mean()) if fixed.any() else None}
                for t in TARGETS:
                    c = certify_threshold(s, loss, target=t, delta=DELTA)
                    acc = conf >= c.threshold if c.certified else np.zeros(unl.size, bool)
                    rec[f"raw_{t}"] = {"certified": c.certified, "threshold": c.to_dict()["threshold"], "error_bound": c.to_dict()["error_bound"],
                                       "coverage": float(acc.mean()), "error": float(1 - right0[acc].mean()) if acc.any() else None}
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            emit(rec)


def rescore_dumps(folder: Path, emit) -> None:
    """The guarantee part again from saved splits (``--dump``): the certificate as the stage makes it
    now (pool = the unlabeled rows, novel ones never accepted), without scoring anything again."""
    for f in sorted(folder.glob("*.npz"), key=lambda p: (p.name.rsplit("-", 1)[0], int(p.stem.rsplit("-", 1)[1]))):
        d = np.load(f)
        name, frac, seed = f.stem.rsplit("-", 2)
        given, label, conf, novel = d["given"], d["label"], d["confidence"], d["novel"]
        unl = np.flatnonzero(given < 0)
        right = label[unl] == d["truth"][unl]
        s, loss = heldout_losses(label, conf, given, d["heldout"], d["dropped"], rejected=novel)
        pool = np.where(novel[unl], -np.inf, conf[unl])
        rec = {"part": "guarantee", "scoring": "fold", "dataset": name, "fraction": float(frac), "seed": int(seed), "n_labeled": int((given >= 0).sum()),
               "n_calibration": int(s.size), "n_unlabeled": int(unl.size), "fold_accuracy": float(right.mean())}
        for t in TARGETS:
            c = certify_threshold(s, loss, target=t, delta=DELTA, pool=pool)
            acc = pool >= c.threshold if c.certified else np.zeros(unl.size, bool)
            rec[f"target_{t}"] = {"certified": c.certified, "error_bound": c.to_dict()["error_bound"], "best_bound": c.to_dict()["best_bound"],
                                  "coverage": float(acc.mean()), "error": float(1 - right[acc].mean()) if acc.any() else None}
        emit(rec)


def run_closed(name, x, y, classes, text, graph, fractions, seeds, emit):
    """Closed set (every class labeled): the fixed threshold's coverage and accuracy with and without rejecting novel samples."""
    k = len(classes)
    for frac in fractions:
        for seed in seeds:
            given, _ = rd.given_labels(y, frac, 0.0, seed, k)
            r, dropped = score(x, given, k, graph, text)
            unl = np.flatnonzero(given < 0)
            right = r.label[unl] == y[unl]
            fixed = thresholds.accept(r.probs[unl], "fixed", 0.95)
            nov = novelty_of(x, given, k, r, dropped, RATES[0])
            rec = {"part": "closed", "dataset": name, "fraction": frac, "seed": seed}
            for rate in (None, *RATES):
                keep = fixed if rate is None else fixed & ~(nov.p_value[unl] <= rate)
                rec[f"reject_{rate}"] = {"coverage": float(keep.mean()), "accuracy": float(right[keep].mean()) if keep.any() else None,
                                         "novel_share": float((nov.p_value[unl] <= rate).mean()) if rate else 0.0}
            emit(rec)


def run_openset(name, x, y, classes, text, graph, n_unseen, seeds, emit):
    from sklearn.linear_model import LogisticRegression

    k_all = len(classes)
    for seed in seeds:
        t0 = time.perf_counter()
        rng = np.random.default_rng(1000 + seed)
        unseen = np.sort(rng.choice(k_all, n_unseen, replace=False))
        seen = np.setdiff1d(np.arange(k_all), unseen)
        code = np.full(k_all, -1)
        code[seen] = np.arange(seen.size)
        ys = code[y]  # -1 for unseen classes
        given_all, _ = rd.given_labels(y, 0.5, 0.0, seed, k_all)
        given = np.where((given_all >= 0) & (ys >= 0), ys, -1)
        r, dropped = score(x, given, seen.size, graph, text[seen] if text is not None else None)
        unl = np.flatnonzero(given < 0)
        is_new = ys[unl] < 0
        nov = novelty_of(x, given, seen.size, r, dropped, 0.05)
        dist = novelty_scores(x, given, seen.size, reject_rate=0.05)  # distances only, for the table
        lab = given >= 0
        lr = LogisticRegression(max_iter=1000).fit(x[lab], given[lab])
        msp = 1 - lr.predict_proba(x[unl]).max(axis=1)
        rec = {"part": "openset", "dataset": name, "seed": seed, "n_unseen_classes": int(n_unseen), "n_unlabeled": int(unl.size),
               "n_unseen_samples": int(is_new.sum())}
        for key, sc in (("novelty", nov.score[unl]), ("msp_lr", msp), ("one_minus_conf", 1 - r.confidence[unl]),
                        ("novelty_distances", dist.score[unl]), ("novelty_prototype", nov.components["prototype"][unl]), ("novelty_knn", nov.components["knn"][unl])):
            rec[key] = {"auroc": auroc(sc[is_new], sc[~is_new]), "fpr95": fpr_at_tpr(sc[is_new], sc[~is_new])}
        fixed = thresholds.accept(r.probs[unl], "fixed", 0.95)
        right = (r.label[unl] == ys[unl]) & ~is_new
        for rate in (None, *RATES):
            keep = fixed if rate is None else fixed & ~(nov.p_value[unl] <= rate)
            rec[f"accept_{rate or 'none'}"] = {
                "coverage": float(keep.mean()), "precision": float(right[keep].mean()) if keep.any() else None,
                "seen_precision": float(right[keep & ~is_new].mean()) if (keep & ~is_new).any() else None,
                "unseen_accepted": int((keep & is_new).sum()), "seen_rejected_share": float((fixed & ~keep & ~is_new).sum() / max((fixed & ~is_new).sum(), 1))}
        # Discovery: on the unlabeled samples judged novel, and on every unlabeled sample (GCD's setting).
        for mode, cand in (("novel", nov.novel & (given < 0)), ("unlabeled", given < 0)):
            d = discover_classes(x, given, seen.size, cand, max_new=max(20, 2 * n_unseen), seed=seed)
            truth_new = y[unl][is_new]
            rec[f"discovery_{mode}"] = {
                "n_candidates": int(cand.sum()), "candidates_unseen_share": float(is_new[cand[unl]].mean()) if cand.any() else None,
                "n_clusters": d.n_clusters, "count_error": int(d.n_clusters - n_unseen), "acc": hungarian_accuracy(d.cluster[unl][is_new], truth_new),
                "precision": float(is_new[d.cluster[unl] >= 0].mean()) if (d.cluster[unl] >= 0).any() else None}
            crow = np.flatnonzero(cand)
            if crow.size >= n_unseen:
                d_true = discover_classes(x, given, seen.size, cand, n_clusters=n_unseen, seed=seed)
                rec[f"discovery_{mode}"]["acc_true_k"] = hungarian_accuracy(d_true.cluster[unl][is_new], truth_new)
                _, a = knn.kmeans(x[crow], n_unseen, seed=seed)
                km = np.full(x.shape[0], -1)
                km[crow] = a
                rec[f"kmeans_{mode}"] = {"acc": hungarian_accuracy(km[unl][is_new], truth_new), "precision": float(is_new[cand[unl]].mean())}
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        emit(rec)


# -- tables -----------------------------------------------------------------------------------


def _ms(vals, digits=3):
    v = [float(a) for a in vals if a is not None]
    return f"{np.mean(v):.{digits}f}±{np.std(v):.{digits}f}" if v else "–"


def _significant(c: dict, n_unlabeled: int, target: float, level: float = 0.05) -> bool:
    """The accepted pool's errors are too many for an error rate at the target: P(Binomial(n, target) >= k) < level."""
    from scipy import stats

    if not c["certified"] or c["error"] is None:
        return False
    n = round(c["coverage"] * n_unlabeled)
    k = round(c["error"] * n)
    return bool(n and stats.binom.sf(k - 1, n, target) < level)


def render(records: list[dict]) -> list[str]:
    out = []
    g = [r for r in records if r["part"] == "guarantee"]
    if g:
        out += ["| dataset | labeled | scoring | splits | calibration n | fixed 0.95: coverage, error, error > 0.02 / 0.05 | target 0.02: certified, coverage, error, violations | target 0.05: certified, coverage, error, violations | raw-confidence variant: violations 0.02 / 0.05 | smallest certifiable error (median) |",
                "| --- | --- | --- | ---: | ---: | --- | --- | --- | --- | --- |"]
        frame = pd.DataFrame(g)
        # Records before fold scoring certified ranks of the final run's confidences.
        frame["scoring"] = frame["scoring"].fillna("rank") if "scoring" in frame else "rank"
        for (ds, fr, how), grp in frame.groupby(["dataset", "fraction", "scoring"], sort=False):
            rows = grp.to_dict("records")
            n = len(rows)
            fx = [r["fixed"] for r in rows if isinstance(r.get("fixed"), dict)]
            fe = [f["error"] or 0.0 for f in fx]
            cells = [f"{_ms([f['coverage'] for f in fx])}, {_ms(fe)}, {sum(e > 0.02 for e in fe)}/{len(fx)} / {sum(e > 0.05 for e in fe)}/{len(fx)}" if fx else "–"]
            for t in TARGETS:
                have = [r for r in rows if f"target_{t}" in r]
                ts = [r[f"target_{t}"] for r in have]
                cert = [c for c in ts if c["certified"]]
                viol = sum((c["error"] or 0.0) > t for c in cert)
                sig = sum(_significant(r[f"target_{t}"], r["n_unlabeled"], t) for r in have)
                cells.append(f"{len(cert)}/{len(ts)}, {_ms([c['coverage'] for c in ts])}, {_ms([c['error'] for c in cert])}, {viol}/{len(ts)} ({viol / max(len(ts), 1):.0%}; {sig} significant)"
                             if ts else "–")
            raw = []
            for t in TARGETS:
                rr = [r[f"raw_{t}"] for r in rows if isinstance(r.get(f"raw_{t}"), dict)]
                cert = [c for c in rr if c["certified"]]
                sig = sum(_significant(r[f"raw_{t}"], r["n_unlabeled"], t) for r in rows if isinstance(r.get(f"raw_{t}"), dict))
                raw.append(f"{sum((c['error'] or 0.0) > t for c in cert)}/{len(rr)} ({sig} significant; certified {len(cert)}, coverage {_ms([c['coverage'] for c in rr], 2)})")
            cells.append(" / ".join(raw))
            best = [r[f"target_{TARGETS[0]}"].get("best_bound") for r in rows if f"target_{TARGETS[0]}" in r]
            cells.append(f"{np.median([b for b in best if b is not None]):.3f}" if any(b is not None for b in best) else "–")
            out.append(f"| {ds} | {fr:g} ({_ms([r['n_labeled'] for r in rows], 0)}) | {how} | {n} | {_ms([r['n_calibration'] for r in rows], 0)} | " + " | ".join(cells) + " |")
    c = [r for r in records if r["part"] == "closed"]
    if c:
        out += ["", "| dataset | labeled | seeds | fixed 0.95: coverage, accuracy | + reject novel at 1%: coverage, accuracy | at 5% | at 10% |", "| --- | --- | ---: | --- | --- | --- | --- |"]
        for (ds, fr), grp in pd.DataFrame(c).groupby(["dataset", "fraction"], sort=False):
            rows = grp.to_dict("records")

            def ca(key):
                return f"{_ms([r[key]['coverage'] for r in rows])}, {_ms([r[key]['accuracy'] for r in rows])}"

            out.append(f"| {ds} | {fr:g} | {len(rows)} | {ca('reject_None')} | {ca('reject_0.01')} | {ca('reject_0.05')} | {ca('reject_0.1')} |")
    o = [r for r in records if r["part"] == "openset"]
    if o:
        out += ["", "| dataset | unseen classes | seeds | AUROC novelty / 1-MSP(LR) / 1-confidence | FPR@95%TPR novelty / 1-MSP(LR) / 1-confidence | AUROC distances only / prototype / kNN | accepted precision, coverage: no rejection / reject 5% | unseen accepted: none / 5% |",
                "| --- | ---: | ---: | --- | --- | --- | --- | --- |"]
        for ds, grp in pd.DataFrame(o).groupby("dataset", sort=False):
            rows = grp.to_dict("records")

            def m(key, sub):
                return _ms([r[key][sub] for r in rows])

            out.append(f"| {ds} | {rows[0]['n_unseen_classes']} | {len(rows)} | {m('novelty', 'auroc')} / {m('msp_lr', 'auroc')} / {m('one_minus_conf', 'auroc')} | "
                       f"{m('novelty', 'fpr95')} / {m('msp_lr', 'fpr95')} / {m('one_minus_conf', 'fpr95')} | {m('novelty_distances', 'auroc')} / {m('novelty_prototype', 'auroc')} / {m('novelty_knn', 'auroc')} | "
                       f"{m('accept_none', 'precision')}, {m('accept_none', 'coverage')} / {m('accept_0.05', 'precision')}, {m('accept_0.05', 'coverage')} | "
                       f"{_ms([r['accept_none']['unseen_accepted'] for r in rows], 0)} / {_ms([r['accept_0.05']['unseen_accepted'] for r in rows], 0)} |")
        out += ["", "| dataset | unseen classes | pool | candidates (share unseen) | estimated count (error) | accuracy on unseen: discovery, estimated count / discovery, true count / k-means, true count | share of the samples put in new clusters that are unseen: discovery / k-means |",
                "| --- | ---: | --- | --- | --- | --- | --- |"]
        for ds, grp in pd.DataFrame(o).groupby("dataset", sort=False):
            rows = grp.to_dict("records")
            for mode in ("novel", "unlabeled"):
                d = [r[f"discovery_{mode}"] for r in rows]
                out.append(f"| {ds} | {rows[0]['n_unseen_classes']} | {mode} | {_ms([x['n_candidates'] for x in d], 0)} ({_ms([x['candidates_unseen_share'] for x in d], 2)}) | "
                           f"{_ms([x['n_clusters'] for x in d], 1)} ({_ms([x['count_error'] for x in d], 1)}) | {_ms([x['acc'] for x in d])} / "
                           f"{_ms([x.get('acc_true_k') for x in d])} / {_ms([r.get(f'kmeans_{mode}', {}).get('acc') for r in rows])} | "
                           f"{_ms([x.get('precision') for x in d], 2)} / {_ms([r.get(f'kmeans_{mode}', {}).get('precision') for r in rows], 2)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["guarantee", "closed", "openset", "all"], default="all")
    ap.add_argument("--datasets", default="digits,banking77,cifar10")
    ap.add_argument("--fractions", default=None, help="label fractions for the guarantee part, e.g. 0.25,0.5 (default: per dataset)")
    ap.add_argument("--splits", type=int, default=20, help="random splits per dataset and label fraction (guarantee)")
    ap.add_argument("--first-split", type=int, default=0, help="seed of the first split (guarantee; to run splits in parallel processes)")
    ap.add_argument("--no-baseline", action="store_true", help="guarantee: skip the default run (fixed 0.95 and the raw-confidence variant)")
    ap.add_argument("--dump", type=Path, help="guarantee: also save each split's scores, labels and truth here (.npz)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per dataset (open set)")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON lines, appended")
    ap.add_argument("--table", action="store_true", help="only print the tables from --out")
    ap.add_argument("--rescore", type=Path, help="guarantee part from the splits saved by --dump in this folder, with today's certificate")
    args = ap.parse_args(argv)
    if args.rescore:
        records = []
        rescore_dumps(args.rescore, records.append)
        print("\n".join(render(records)))
        return 0
    if args.table:
        print("\n".join(render([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()])))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(rec):
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    for name in args.datasets.split(","):
        x, y, classes, text = load(name)
        graph = knn.knn_graph(x, 10, exclude_self=True, device="cpu")
        if args.part in ("guarantee", "all"):
            fr = tuple(float(f) for f in args.fractions.split(",")) if args.fractions else FRACTIONS[name]
            run_guarantee(name, x, y, classes, text, graph, fr, args.splits, emit, baseline=not args.no_baseline, first_split=args.first_split,
                          dump=args.dump)
        if args.part in ("closed", "all"):
            run_closed(name, x, y, classes, text, graph, FRACTIONS[name], range(args.seeds), emit)
        if args.part in ("openset", "all") and name in ("banking77", "cifar10"):
            run_openset(name, x, y, classes, text, graph, {"banking77": 15, "cifar10": 3}[name], range(args.seeds), emit)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
