"""labelkit's default pipeline on real data, against scikit-learn and cleanlab on the same embeddings.

    python benchmarks/realdata.py --quick            # one small setting per dataset, seed 0 (~10 min here)
    python benchmarks/realdata.py                    # 5 datasets x 3 fractions x 2 noise rates x 3 seeds
    python benchmarks/realdata.py --datasets cifar10,ag_news --seeds 0,1 --n 2000 --fractions 10,0.1 --noise 0.1
    python benchmarks/realdata.py --validated        # full test sets, all labeled: cleanlab's validated errors
    python benchmarks/realdata.py --embed-model cifar10=efficientnet-lite0   # override one dataset's embedder

What a user would do. Each dataset becomes a DATA folder under ``--work`` (default
benchmarks/results/realdata/, git-ignored): CIFAR-10 test JPEGs and MNIST test digits (PNG files
written from the IDX pixels) as ``images/<row>.jpg|png`` with a ``labels.csv`` manifest
(``id,path,label``), AG News (title. description), BANKING77 (test.csv) and 20 Newsgroups (raw
posts) as ``labels.csv`` (``id,text,label``); an empty label is unlabeled. ``--n`` (default
2,000; BANKING77 all 3,080 test queries, 40 per intent) draws a fixed stratified subsample (the
same for every seed), ``--full`` takes every row.
For each setting and seed the script rewrites labels.csv and runs, through labelkit's CLI
(in-process with typer's CliRunner, or ``--subprocess``), with defaults and ``--json``:
``labelkit embed DATA``, ``labelkit prototype DATA`` (run explicitly: a stage runs its upstream
only when that output is missing, not when it is stale), ``labelkit pseudolabel DATA``,
``labelkit detect-noise DATA`` (and ``labelkit distill DATA`` with ``--with-distill``). The
workspace (DATA/.labelkit) is kept across settings and seeds: embed reuses the vectors of
unchanged samples, so a dataset is embedded once (its first run) and each later run pays only
for reading them back. The printed timings show that.

Settings: ``--fractions`` (an integer = labels per class, a share < 1 = that share of each class,
at least one; default 10,0.1,0.5), ``--noise`` (share of the given labels flipped; default 0,0.1),
``--seeds`` (default 0,1,2). Flip recipe per seed: ``rng = np.random.default_rng(seed)``; the
labeled rows per class; then ``round(noise * n_labeled)`` of them, each moved to
``(y + rng.integers(1, K)) % K``.

Baselines on labelkit's own embeddings.parquet (L2-normalised vectors as written):
``LabelSpreading(kernel="knn", n_neighbors=10)`` (default alpha 0.2) and
``SelfTrainingClassifier(LogisticRegression(max_iter=1000))`` (threshold 0.75), fitted on the
given (possibly noisy) labels; cleanlab 2.9 ``find_label_issues(labels, pred_probs)`` with its
defaults (``n_jobs=1``: the machine is shared; results do not depend on it) on 5-fold
``cross_val_predict(LogisticRegression(max_iter=1000), X, y, method="predict_proba")`` of the
labeled part, ranked by ``get_label_quality_scores`` (self-confidence; the order
``return_indices_ranked_by="self_confidence"`` gives, extended past the flagged rows).

Metrics per dataset x setting x seed, mean ± sd over seeds in the table, every run in the JSON
(``--json-out``, default benchmarks/results/realdata.json): accuracy of the predictions for the
unlabeled samples at 100 / 80 / 50 % coverage (each method ranked by its own confidence);
labelkit's acceptance coverage and the accuracy of its accepted pseudo-labels; for the label
issues (``is_issue`` for labelkit) precision, recall, F1 against the flipped rows, the number
flagged, and recall of the flipped rows at a review budget of the top 1 % and 5 % of the labeled
samples (labelkit's ``rank``, cleanlab's label-quality order); the embedder the pipeline chose
(the embed summary's ``model``, and ``model_choice`` when present) and the stage summaries'
``warnings`` (counted per run, codes kept in the JSON).

``--validated``: the full CIFAR-10 (10,000, embedded with efficientnet-lite0 unless
``--embed-model`` says otherwise: pinned so that the row does not depend on the labels auto scores; auto picks it too), MNIST (10,000) and
20 Newsgroups (7,532) test sets, every sample labeled with its original label and no injected
noise; reported: label issues flagged, the human-validated label errors (Northcutt et al. 2021,
cleanlab-label-errors/validated_label_errors.json: 54 / 15 / 82) found, found / flagged among
the MTurk-checked rows, and recall of validated errors at the top 1 % and 5 %, for labelkit and
cleanlab.

Cost of embedding here (the first run of each dataset, --quick sizes; 2 cores shared with other
jobs, ``--threads 1``, 2026-12-07, two runs: load 2-5 / load 6-7; later runs reuse the vectors
in 0.1-1 s):

| dataset | rows embedded | model (auto's choice) | wall s | rate | so the full set |
| --- | ---: | --- | ---: | ---: | --- |
| CIFAR-10 test JPEGs | 1,000 | efficientnet-lite0 (LOO 10-NN on the labels: pixels:32 0.12, efficientnet 0.46; ~5 s of scoring) | 39.5 / 63.3 | 16-25/s | 2,000 ~1.5-2 min; 10,000 ~7-11 min |
| AG News | 1,000 | minilm | 23.5 / 27.8 | 36-43/s | 7,600 ~3-4 min |
| BANKING77 test | 3,080 | minilm | 26.8 / 29.7 | ~110/s (short queries) | – |
| 20 Newsgroups | 1,000 | minilm | 56.2 / 100.4 | 10-18/s (long raw posts) | 7,532 ~7-13 min |
| MNIST test PNGs | 1,000 | pixels:28 (efficientnet-lite0 scored too) | 3.3 / 4.2 | ~250/s | – |
| MNIST test PNGs, ``--validated`` | 10,000 | efficientnet-lite0 (auto; 300 labels scored: 0.84 against pixels:28 0.77) | 344.5 | ~29/s | |
| CIFAR-10, ``--validated`` | 10,000 | efficientnet-lite0 (given) | 331.0 | ~30/s | |
| 20 Newsgroups, ``--validated`` | 7,532 | minilm | 431.3 | ~17/s | |

Writing the DATA folders is a one-time cost too: the 10,000 CIFAR JPEGs took 205 s to unpack on
this machine's file system (about 20 ms a file), MNIST's 10,000 PNGs about 1 s.

A labelkit bug this script worked around (2026-12-07, in the embed-choice work then in progress;
gone from the tree by 01:00 that day, when auto reruns reused every vector): a second
``labelkit embed DATA`` with ``--model auto`` on a workspace whose embeddings.parquet already
held the scoring sample's ids failed with ``InvalidIndexError: Reindexing only valid with
uniquely valued Index objects`` (stages/embed.py ``_embed_with_model``: the scoring sample's
ids were appended to ``done_ids`` while ``old_ids`` held them too). The script then reruns embed
with ``--model <what the first run chose>`` and marks the row ``[pinned: auto failed]``; the
JSON keeps the error (``embed_pinned``). Once fixed, every run is auto again.
Threads: ``--threads 1`` (default) limits torch and BLAS to one thread (the machine is shared;
two spinning OpenMP threads under load were 15x slower in benchmarks/noise.py); 0 leaves the
libraries' defaults. Skipped cleanly (exit 0) when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import realdata_data as rd  # noqa: E402

COVERAGES = (1.0, 0.8, 0.5)
BUDGETS = (0.01, 0.05)
DEFAULT_DATASETS = ("cifar10", "ag_news", "banking77", "20news", "mnist")
# Rows per dataset unless --n or --full: a fixed stratified subsample. BANKING77's test set is
# all of it (3,080, 40 per intent): fewer leave too few per class for 10 labels per class.
DEFAULT_N = {"cifar10": 2000, "ag_news": 2000, "banking77": None, "20news": 2000, "mnist": 2000}
QUICK_N = {"cifar10": 1000, "ag_news": 1000, "banking77": None, "20news": 1000, "mnist": 1000}
VALIDATED_DATASETS = ("cifar10", "mnist", "20news")
VALIDATED_MODEL = {"cifar10": "efficientnet-lite0"}  # the issue asks for EfficientNet features on CIFAR-10


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- running labelkit -------------------------------------------------------------------------


class StageFailed(RuntimeError):
    """A labelkit command exited non-zero; the message has the command and its error output."""


@dataclass
class Runner:
    """Runs ``labelkit STAGE DATA --json [args]`` in-process (CliRunner) or as a subprocess."""

    subprocess: bool = False
    threads: int = 1

    def __call__(self, stage: str, data: Path, *args: str) -> tuple[dict, float]:
        argv = [stage, str(data), "--json", *args]
        t = time.perf_counter()
        if self.subprocess:
            env = dict(os.environ)
            if self.threads:
                for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                    env[var] = str(self.threads)
            r = subprocess.run([sys.executable, "-m", "labelkit", *argv], capture_output=True, text=True, env=env)
            code, out, err = r.returncode, r.stdout, r.stderr
        else:
            from typer.testing import CliRunner

            from labelkit.cli import app

            r = CliRunner().invoke(app, argv)
            code, out = r.exit_code, r.stdout
            err = r.stderr + ("".join(traceback.format_exception(r.exception)) if r.exception and not isinstance(r.exception, SystemExit) else "")
        wall = time.perf_counter() - t
        if code != 0:
            raise StageFailed(f"`labelkit {' '.join(argv)}` exited {code}:\n{err.strip()[-3000:]}")
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]), wall


# -- methods on the embeddings ----------------------------------------------------------------


def label_spreading(x: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.semi_supervised import LabelSpreading

    m = LabelSpreading(kernel="knn", n_neighbors=10).fit(x, given)
    p = m.label_distributions_
    return m.classes_[p.argmax(1)], p.max(1)


def self_training(x: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    m = SelfTrainingClassifier(LogisticRegression(max_iter=1000)).fit(x, given)
    p = m.predict_proba(x)
    return m.classes_[p.argmax(1)], p.max(1)


def cleanlab_issues(x: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(issue mask, quality score) over the labeled rows: cleanlab defaults on 5-fold LogReg probs."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    present, codes = np.unique(given, return_inverse=True)  # cleanlab wants labels 0..K'-1
    cv = 5
    if np.bincount(codes).max() < 5:
        # StratifiedKFold refuses when every class has fewer members than folds (1-4 labels per
        # class): plain 5-fold then, where a class missing from a fold's training part gets 0.
        from sklearn.model_selection import KFold

        cv = KFold(5)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, codes, cv=cv, method="predict_proba")
    return find_label_issues(codes, probs, n_jobs=1), get_label_quality_scores(codes, probs)


def acc_at_coverage(pred: np.ndarray, conf: np.ndarray, truth: np.ndarray) -> list[float]:
    order = np.argsort(-conf, kind="stable")
    return [float((pred[order[: max(1, round(c * order.size))]] == truth[order[: max(1, round(c * order.size))]]).mean()) for c in COVERAGES]


def prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = float((pred & truth).sum())
    p = tp / pred.sum() if pred.sum() else float("nan")
    r = tp / truth.sum() if truth.sum() else float("nan")
    f = 2 * p * r / (p + r) if truth.sum() and pred.sum() and p + r else (0.0 if truth.sum() else float("nan"))
    return {"precision": p, "recall": r, "f1": f, "flagged": int(pred.sum())}


def recall_at(order: np.ndarray, truth: np.ndarray) -> list[float]:
    """Recall of ``truth`` among the first share of ``order`` (rows, most suspect first), per budget."""
    if not truth.any():
        return [float("nan")] * len(BUDGETS)
    return [float(truth[order[: max(1, round(b * order.size))]].sum() / truth.sum()) for b in BUDGETS]


# -- one dataset ------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A prepared DATA folder: the rows it holds, their true labels and the manifest's inputs."""

    source: rd.Source
    data: Path
    rows: np.ndarray
    inputs: pd.DataFrame
    embed_args: tuple[str, ...] = ()
    prepare_s: float = 0.0
    first_model: str | None = None  # what the first embed run chose (the fallback when auto fails)
    timings: dict = field(default_factory=dict)

    @property
    def y(self) -> np.ndarray:
        return self.source.y[self.rows]


def prepare_dataset(name: str, work: Path, n: int | None, model: str | None) -> Dataset:
    t = time.perf_counter()
    source = rd.load(name)
    rows = rd.stratified_subsample(source.y, n)
    tag = "full" if len(rows) == len(source.y) else f"n{len(rows)}"
    suffix = "" if model is None else "-" + model.replace(":", "").replace("/", "_")
    data = work / f"{name}-{tag}{suffix}"
    inputs = rd.prepare(source, data, rows)
    ds = Dataset(source, data, rows, inputs, ("--model", model) if model else (), time.perf_counter() - t)
    if (data / ".labelkit" / "embeddings.parquet").exists():  # a workspace from an earlier invocation
        ds.first_model = _embeddings_meta(ds).get("model")
    _log(f"{name}: DATA {data} ({len(rows)} of {len(source.y)} rows, {len(source.classes)} classes) prepared in {ds.prepare_s:.1f} s")
    return ds


def run_pipeline(ds: Dataset, given: np.ndarray, runner: Runner, *, with_distill: bool, detect_only: bool = False) -> dict:
    """Write labels.csv, run the stages; the summaries, per-stage wall times and the artifacts."""
    rd.write_manifest(ds.data, ds.inputs, given, ds.source.classes)
    stages = [("embed", ds.embed_args)] + ([] if detect_only else [("prototype", ()), ("pseudolabel", ())]) + [("detect-noise", ())]
    if with_distill and not detect_only:
        stages.append(("distill", ()))
    out: dict = {"summaries": {}, "wall_s": {}, "embed_pinned": None}
    for stage, args in stages:
        try:
            summary, wall = runner(stage, ds.data, *args)
        except StageFailed as e:
            if stage != "embed" or args or ds.first_model is None:
                raise
            # `labelkit embed` with --model auto failed on a rerun (labelkit bug, see the module
            # docstring): pin the model the first run chose so that the other stages still run.
            _log(f"    embed (auto) FAILED, rerunning with --model {ds.first_model}: {str(e).splitlines()[-1]}")
            out["embed_pinned"] = {"model": ds.first_model, "error": str(e)}
            summary, wall = runner(stage, ds.data, "--model", ds.first_model)
        if stage == "embed" and ds.first_model is None:
            ds.first_model = summary.get("model") or _embeddings_meta(ds).get("model")
        out["summaries"][stage] = summary
        out["wall_s"][stage] = round(wall, 2)
        extra = f", {summary.get('n_embedded', 0)} embedded, {summary.get('n_reused', 0)} reused" if stage == "embed" else ""
        _log(f"    {stage}: {wall:.1f} s{' (skipped: up to date)' if summary.get('skipped') else ''}{extra}")
    return out


def _embeddings_meta(ds: Dataset) -> dict:
    from labelkit import artifacts

    return artifacts.read_metadata(ds.data / ".labelkit" / "embeddings.parquet")


def _embeddings(ds: Dataset) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows of ds.rows in embedding order as positions, vectors, metadata) from embeddings.parquet."""
    from labelkit import artifacts

    path = ds.data / ".labelkit" / "embeddings.parquet"
    ids, x = artifacts.read_embeddings(path)
    pos = pd.Index(ds.inputs["id"]).get_indexer(ids)
    if (pos < 0).any():
        raise RuntimeError(f"{path}: ids not in the manifest")
    return pos, np.asarray(x, np.float32), artifacts.read_metadata(path)


def _by_id(ds: Dataset, table: pd.DataFrame) -> np.ndarray:
    pos = pd.Index(ds.inputs["id"]).get_indexer(table["id"])
    if (pos < 0).any():
        raise RuntimeError("artifact ids not in the manifest")
    return pos


def _pipeline_facts(ds: Dataset, run: dict, meta: dict) -> dict:
    s = run["summaries"]
    embed = s["embed"]
    warn = {stage: [w.get("code", "?") for w in (summ.get("warnings") or [])] for stage, summ in s.items()}
    return {
        "model": embed.get("model") or meta.get("model"),
        "model_choice": embed.get("model_choice"),
        "warnings": warn,
        "n_warnings": sum(len(v) for v in warn.values()),
        "wall_s": run["wall_s"],
        "stage_wall_time_s": {k: v.get("wall_time_s") for k, v in s.items()},
        "detect_noise_probs": s["detect-noise"].get("probs"),
        "n_embedded": embed.get("n_embedded"),
        "embed_pinned": run["embed_pinned"],
        "embed_skipped": bool(embed.get("skipped")),
    }


def evaluate_run(ds: Dataset, given: np.ndarray, flipped: np.ndarray, run: dict) -> dict:
    """Every metric of one run (labelkit's artifacts and the baselines on the same embeddings)."""
    ws = ds.data / ".labelkit"
    y = ds.y
    pos, x, meta = _embeddings(ds)
    xg, yt = given[pos], y[pos]  # in embedding order
    rec = _pipeline_facts(ds, run, meta)
    rec.update(n=int(len(y)), n_embedded_rows=int(len(pos)), n_labeled=int((given >= 0).sum()), n_flipped=int(flipped.sum()))
    t_base = {}

    # pseudo-labels on the unlabeled samples
    unl = np.flatnonzero(given < 0)
    if unl.size:
        pl = pd.read_parquet(ws / "pseudolabels.parquet")
        names = {c: i for i, c in enumerate(ds.source.classes)}
        pred = np.full(len(y), -1, np.int64)
        conf = np.full(len(y), -np.inf)
        acc_flag = np.zeros(len(y), bool)
        p = _by_id(ds, pl)
        pred[p] = pl["label"].map(names).to_numpy()
        conf[p] = pl["confidence"].to_numpy(np.float64)
        acc_flag[p] = pl["accepted"].to_numpy(bool)
        rec["labelkit_missing_pseudolabels"] = int((pred[unl] < 0).sum())  # counted as wrong
        rec["acc"] = {"labelkit": acc_at_coverage(pred[unl], conf[unl], y[unl])}
        acc_u = acc_flag[unl]
        rec["labelkit_accepted"] = {"coverage": float(acc_u.mean()),
                                    "accuracy": float((pred[unl][acc_u] == y[unl][acc_u]).mean()) if acc_u.any() else float("nan")}
        unl_e = xg < 0  # the baselines' unlabeled rows, in embedding order
        for name, fn in (("label_spreading", label_spreading), ("self_training", self_training)):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bp, bc = fn(x, xg)
            t_base[name] = round(time.perf_counter() - t, 2)
            rec["acc"][name] = acc_at_coverage(bp[unl_e], bc[unl_e], yt[unl_e])

    # label issues among the labeled samples
    lab = np.flatnonzero(given >= 0)
    issues = pd.read_parquet(ws / "label_issues.parquet")
    p = _by_id(ds, issues)
    flagged = np.zeros(len(y), bool)
    flagged[p[issues["is_issue"].to_numpy(bool)]] = True
    order_lk = p[np.argsort(issues["rank"].to_numpy(), kind="stable")]
    t = time.perf_counter()
    lab_e = np.flatnonzero(xg >= 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl_mask, cl_quality = cleanlab_issues(x[lab_e], xg[lab_e])
    t_base["cleanlab"] = round(time.perf_counter() - t, 2)
    cl_rows = pos[lab_e]  # manifest positions of the labeled rows cleanlab saw
    cl_flagged = np.zeros(len(y), bool)
    cl_flagged[cl_rows[cl_mask]] = True
    order_cl = cl_rows[np.argsort(cl_quality, kind="stable")]
    rec["issues"] = {}
    for name, fl, order in (("labelkit", flagged, order_lk), ("cleanlab", cl_flagged, order_cl)):
        rec["issues"][name] = {**prf(fl[lab], flipped[lab]), "recall_at": recall_at(order, flipped)}
    rec["baseline_s"] = t_base
    rec["_flagged"], rec["_order"] = {"labelkit": flagged, "cleanlab": cl_flagged}, {"labelkit": order_lk, "cleanlab": order_cl}
    return rec


# -- the benchmark ----------------------------------------------------------------------------


def _fraction_name(f: float) -> str:
    return f"{int(f)}/class" if f >= 1 else f"{f:.0%}"


def bench_dataset(ds: Dataset, settings: list[tuple[float, float]], seeds: list[int], runner: Runner, *, with_distill: bool) -> list[dict]:
    records = []
    k = len(ds.source.classes)
    for fraction, noise in settings:
        for seed in seeds:
            given, flipped = rd.given_labels(ds.y, fraction, noise, seed, k)
            _log(f"  {ds.source.name} {_fraction_name(fraction)} labeled, {noise:.0%} noise, seed {seed}:")
            t = time.perf_counter()
            base = {"dataset": ds.source.name, "fraction": fraction, "noise": noise, "seed": seed}
            try:
                run = run_pipeline(ds, given, runner, with_distill=with_distill)
                rec = {**base, **evaluate_run(ds, given, flipped, run)}
            except StageFailed as e:
                _log(f"    FAILED: {e}")
                records.append({**base, "error": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 - a baseline or reading failed: keep the other runs, report it
                _log(f"    FAILED (evaluation): {traceback.format_exc()}")
                records.append({**base, "error": f"evaluation: {type(e).__name__}: {e}"})
                continue
            rec["total_s"] = round(time.perf_counter() - t, 1)
            a = rec.get("acc", {})
            _log(f"    acc@100 labelkit {a.get('labelkit', [np.nan])[0]:.3f} LS {a.get('label_spreading', [np.nan])[0]:.3f} "
                 f"ST {a.get('self_training', [np.nan])[0]:.3f}; F1 labelkit {rec['issues']['labelkit']['f1']:.3f} "
                 f"cleanlab {rec['issues']['cleanlab']['f1']:.3f}; model {rec['model']}; {rec['n_warnings']} warnings; "
                 f"baselines {rec['baseline_s']}; {rec['total_s']} s")
            records.append(rec)
    return records


def bench_validated(ds: Dataset, runner: Runner) -> dict:
    """All rows labeled with their original labels, no injected noise; cleanlab's validated errors."""
    base = {"dataset": ds.source.name, "mode": "validated"}
    given = ds.y.copy()
    _log(f"  {ds.source.name} validated (all {len(given)} labeled):")
    t = time.perf_counter()
    try:
        run = run_pipeline(ds, given, runner, with_distill=False, detect_only=True)
        rec = {**base, **evaluate_run(ds, given, np.zeros(len(given), bool), run)}
    except StageFailed as e:
        _log(f"    FAILED: {e}")
        return {**base, "error": str(e)}
    errors, checked = rd.validated_errors(ds.source.validated_key)
    pos = pd.Index(ds.rows).get_indexer(errors)
    is_err = np.zeros(len(given), bool)
    is_err[pos[pos >= 0]] = True
    is_checked = np.zeros(len(given), bool)
    is_checked[pd.Index(ds.rows).get_indexer(checked)[pd.Index(ds.rows).get_indexer(checked) >= 0]] = True
    rec["validated"] = {"n_errors": int(is_err.sum()), "n_checked": int(is_checked.sum())}
    for name in ("labelkit", "cleanlab"):
        fl = rec["_flagged"][name]
        rec["validated"][name] = {"flagged": int(fl.sum()), "found": int((fl & is_err).sum()),
                                  "flagged_checked": int((fl & is_checked).sum()), "found_checked": int((fl & is_err & is_checked).sum()),
                                  "recall_at": recall_at(rec["_order"][name], is_err)}
    rec["total_s"] = round(time.perf_counter() - t, 1)
    v = rec["validated"]
    _log(f"    validated errors found: labelkit {v['labelkit']['found']}/{v['n_errors']} of {v['labelkit']['flagged']} flagged, "
         f"cleanlab {v['cleanlab']['found']}/{v['n_errors']} of {v['cleanlab']['flagged']}; {rec['total_s']} s")
    return rec


# -- rendering --------------------------------------------------------------------------------


def _ms(xs: list[float], digits: int = 3) -> str:
    xs = [x for x in xs if x == x]  # drop NaN
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f}±{np.std(xs, ddof=1):.{digits}f}"


def _accs(group: list[dict], method: str) -> str:
    if not all("acc" in r for r in group):
        return "–"
    return " / ".join(_ms([r["acc"][method][i] for r in group]) for i in range(len(COVERAGES)))


def _pair(group: list[dict], key, digits: int = 3) -> str:
    return " / ".join(_ms([key(r, m) for r in group], digits) for m in ("labelkit", "cleanlab"))


def _model_cell(r: dict) -> str:
    """The embedder used, and the candidates when it was chosen on evidence (scores in the JSON)."""
    choice = r.get("model_choice") or {}
    scores = choice.get("scores") or {}
    cell = str(r["model"]) + (f" (of {', '.join(scores)})" if len(scores) > 1 else "")
    return cell + (" [pinned: auto failed]" if r.get("embed_pinned") else "")


def render_table(records: list[dict]) -> list[str]:
    ok = [r for r in records if "error" not in r]
    lines = ["| dataset | n | labeled | noise | seeds | acc@100/80/50 labelkit | LabelSpreading | SelfTraining | "
             "labelkit accepted: coverage, acc | issue F1 labelkit / cleanlab | flagged | recall@1% | recall@5% | model | warnings |",
             "| --- | ---: | --- | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = list(dict.fromkeys((r["dataset"], r["fraction"], r["noise"]) for r in records))
    for key in keys:
        group = [r for r in ok if (r["dataset"], r["fraction"], r["noise"]) == key]
        failed = [r for r in records if "error" in r and (r["dataset"], r["fraction"], r["noise"]) == key]
        if not group:
            lines.append(f"| {key[0]} | | {_fraction_name(key[1])} | {key[2]:.0%} | 0 | FAILED ({len(failed)} runs): see the JSON | | | | | | | | | |")
            continue
        g0 = group[0]
        acc_cell = _ms([r["labelkit_accepted"]["coverage"] for r in group]) + ", " + _ms([r["labelkit_accepted"]["accuracy"] for r in group]) if "labelkit_accepted" in g0 else "–"
        models = ", ".join(sorted({_model_cell(r) for r in group}))
        warn = _ms([r["n_warnings"] for r in group], 1)
        codes = sorted({c for r in group for v in r["warnings"].values() for c in v})
        lines.append(
            f"| {key[0]} | {g0['n']} | {_fraction_name(key[1])} ({_ms([r['n_labeled'] for r in group], 0)}) | {key[2]:.0%} | "
            f"{len(group)}{f' ({len(failed)} failed)' if failed else ''} | {_accs(group, 'labelkit')} | {_accs(group, 'label_spreading')} | "
            f"{_accs(group, 'self_training')} | {acc_cell} | {_pair(group, lambda r, m: r['issues'][m]['f1'])} | "
            f"{_pair(group, lambda r, m: r['issues'][m]['flagged'], 0)} | {_pair(group, lambda r, m: r['issues'][m]['recall_at'][0])} | "
            f"{_pair(group, lambda r, m: r['issues'][m]['recall_at'][1])} | {models} | {warn}{' (' + ', '.join(codes) + ')' if codes else ''} |")
    return lines


def render_validated(records: list[dict]) -> list[str]:
    lines = ["| dataset | N (all labeled) | model | method | flagged | validated errors found | found / flagged among MTurk-checked | "
             "recall@1% | recall@5% | warnings |", "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['dataset']} | | | | FAILED: see the JSON | | | | | |")
            continue
        v = r["validated"]
        for m in ("labelkit", "cleanlab"):
            s = v[m]
            lines.append(f"| {r['dataset']} | {r['n']} | {r['model']} | {m} | {s['flagged']} | {s['found']} / {v['n_errors']} | "
                         f"{s['found_checked']} / {s['flagged_checked']} | {s['recall_at'][0]:.3f} | {s['recall_at'][1]:.3f} | "
                         f"{r['n_warnings'] if m == 'labelkit' else ''} |")
    return lines


def render_timings(datasets: list[Dataset], records: list[dict]) -> list[str]:
    lines = ["| dataset | n | prepare s | first embed s (model) | embed s, reused (mean) | prototype s | pseudolabel s | detect-noise s | "
             "LabelSpreading s | SelfTraining s | cleanlab s | runs |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for ds in datasets:
        rs = [r for r in records if r["dataset"] == ds.source.name and "error" not in r and r.get("n") == len(ds.rows)]
        if not rs:
            continue
        first = rs[0]

        def mean(key, src="wall_s"):
            xs = [r[src].get(key) for r in rs if r[src].get(key) is not None]
            return f"{np.mean(xs):.1f}" if xs else "–"

        later = [r["wall_s"]["embed"] for r in rs[1:]]
        what = "up to date, nothing embedded" if first.get("embed_skipped") else f"{first.get('n_embedded')} embedded"
        pinned = ", pinned" if first.get("embed_pinned") else ""
        lines.append(f"| {ds.source.name} | {len(ds.rows)} | {ds.prepare_s:.1f} | {first['wall_s']['embed']:.1f} ({first['model']}, {what}{pinned}) | "
                     f"{f'{np.mean(later):.1f}' if later else '–'} | ")
        lines[-1] += (f"{mean('prototype')} | {mean('pseudolabel')} | {mean('detect-noise')} | {mean('label_spreading', 'baseline_s')} | "
                      f"{mean('self_training', 'baseline_s')} | {mean('cleanlab', 'baseline_s')} | {len(rs)} |")
    return lines


def _jsonable(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


# -- main -------------------------------------------------------------------------------------


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help=f"comma-separated, of {', '.join(DEFAULT_DATASETS)}")
    ap.add_argument("--seeds", default="0,1,2", help="label-selection and flip seeds (default 0,1,2)")
    ap.add_argument("--n", type=int, default=None, help="stratified subsample per dataset (default 2000, BANKING77 all 3,080; --quick 1000)")
    ap.add_argument("--full", action="store_true", help="every row of each dataset (CIFAR-10 10,000, AG News 7,600, ...)")
    ap.add_argument("--fractions", default="10,0.1,0.5", help="labels kept: an integer = per class, < 1 = share of each class (default 10,0.1,0.5)")
    ap.add_argument("--noise", default="0,0.1", help="shares of the given labels flipped (default 0,0.1)")
    ap.add_argument("--validated", action="store_true", help="full CIFAR-10 / MNIST / 20news, all labeled: cleanlab's validated errors")
    ap.add_argument("--quick", action="store_true", help="one small setting per dataset (n 1000, BANKING77 3,080; 10 labels per class, 10%% noise, seed 0)")
    ap.add_argument("--with-distill", action="store_true", help="also run labelkit distill (not measured here; its time is)")
    ap.add_argument("--embed-model", action="append", default=[], metavar="DATASET=MODEL", help="override a dataset's embedder (default: labelkit's auto)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "realdata", help="where the DATA folders live (kept: embeddings are reused)")
    ap.add_argument("--json-out", type=Path, default=ROOT / "benchmarks" / "results" / "realdata.json")
    ap.add_argument("--subprocess", action="store_true", help="run each labelkit command as a subprocess instead of in-process")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1: shared machine; 0 = library defaults)")
    args = ap.parse_args(argv)

    if not rd.SHARED.is_dir():
        print(f"skipped: {rd.SHARED.resolve()} is absent (the real datasets live there)")
        return 0
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in rd.LOADERS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; choose from {', '.join(rd.LOADERS)}")
    if args.validated:
        names = [d for d in names if d in VALIDATED_DATASETS]
    models = dict(VALIDATED_MODEL) if args.validated else {}
    for spec in args.embed_model:
        ds_name, _, model = spec.partition("=")
        models[ds_name] = None if model == "auto" else model
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    settings = [(10, 0.1)] if args.quick else [(f, r) for f in _floats(args.fractions) for r in _floats(args.noise)]

    import contextlib

    limit = contextlib.nullcontext()
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        limit = threadpool_limits(args.threads)
    runner = Runner(subprocess=args.subprocess, threads=args.threads)
    records: list[dict] = []
    prepared: list[Dataset] = []
    t0 = time.perf_counter()
    with limit:
        for name in names:
            if not rd.available(name):
                _log(f"{name}: skipped, {rd.SHARED / rd.LOADERS[name][0]} is absent")
                continue
            n = None if (args.full or args.validated) else (args.n or (QUICK_N if args.quick else DEFAULT_N).get(name, 2000))
            ds = prepare_dataset(name, args.work, n, models.get(name))
            prepared.append(ds)
            if args.validated:
                records.append(bench_validated(ds, runner))
            else:
                records += bench_dataset(ds, settings, seeds, runner, with_distill=args.with_distill)
    total = time.perf_counter() - t0

    if args.validated:
        table = render_validated(records)
        title = "## Validated label errors (full test sets, all labeled, no injected noise)"
    else:
        table = render_table(records)
        title = (f"## labelkit defaults on real data: mean ± sd over seeds {seeds} "
                 f"(acc@c: accuracy of the unlabeled samples' labels at c coverage; issue metrics against the flipped labels; "
                 f"pairs are labelkit / cleanlab)")
    print("\n".join([title, "", *table, "", "Timings (wall s; first embed = the dataset's embedding cost, later runs reuse it):", "",
                     *render_timings(prepared, records), "", f"total {total:.0f} s"]))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    failures = [r for r in records if "error" in r]
    payload = {"argv": sys.argv[1:] if argv is None else argv, "seeds": seeds, "settings": settings, "total_s": round(total, 1),
               "validated": args.validated, "records": [_jsonable(r) for r in records]}
    args.json_out.write_text(json.dumps(payload, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    _log(f"wrote {args.json_out}")
    if failures:
        _log(f"{len(failures)} run(s) failed: " + "; ".join(f"{r['dataset']}: {r['error'].splitlines()[0]}" for r in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
