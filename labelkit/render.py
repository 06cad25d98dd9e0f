"""Rich rendering of stage results for people (the CLI's only output besides --json).

Everything that comes from the user or the data (ids, class names, paths, messages) is printed as
text, never parsed as rich markup: a path with ``[final]`` in it prints intact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"done": "green", "stale": "yellow", "missing": "red"}


def line(console: Console, body: str, *, head: str | None = None) -> None:
    """One line of plain text (numbers highlighted), after a bold ``head:`` when given."""
    text = console.render_str(body, markup=False)
    console.print(Text.assemble((head, "bold"), ": ", text) if head else text)


def warnings(console: Console, items: Iterable[dict[str, Any]], stage: str | None = None) -> None:
    """Each warning in yellow: ``warning: [stage] message`` then ``  try: hint``."""
    for w in items:
        console.print(Text(f"warning: [{w.get('stage', stage)}] {w.get('message', '')}", style="yellow"))
        if w.get("hint"):  # a hint may itself begin "try another ...": no "try: try"
            console.print(Text(f"  try: {w['hint'].removeprefix('try ')}", style="yellow"))


def _table(title: str, columns: Iterable[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    return t


def _row(t: Table, *cells: Any) -> None:
    t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def result(console: Console, res) -> None:
    for up in res.upstream:
        result(console, up)
    if res.skipped:
        line(console, f"{res.reason}, skipping (use --force to rerun)", head=res.stage)
        if res.summary and res.stage in RENDERERS:
            RENDERERS[res.stage](console, res)
    else:
        if "missing" in res.reason:
            line(console, res.reason, head=res.stage)
        RENDERERS.get(res.stage, _generic)(console, res)
    warnings(console, res.warnings, res.stage)


_WHY = {"never run": "first run", "--force": "forced"}


def why_ran(reason: str) -> str:
    """A stage's stale reason, worded as why it ran."""
    return _WHY.get(reason, reason)


def _generic(console: Console, res) -> None:
    line(console, f"ran ({why_ran(res.reason)}); wrote {', '.join(res.outputs)}", head=res.stage)
    for k, v in res.summary.items():
        if not isinstance(v, (dict, list)):
            line(console, f"  {k}: {v}")


def _embed(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    line(console, f"{s['n_embedded']} embedded, {s['n_reused']} reused, {s['n_skipped']} skipped "
         f"with {s['model']} ({s['dim']}-d) in {s.get('wall_time_s', 0)} s; wrote {', '.join(res.outputs)}", head="embed")
    if s.get("n_changed"):
        line(console, f"  {s['n_changed']} samples changed since the last run were embedded again")
    choice = s.get("model_choice") or {}
    scored = {k: v for k, v in (choice.get("scores") or {}).items() if v.get("score") is not None}
    if scored:
        line(console, f"  chose {choice['chosen']} by {choice['by']}: "
             + ", ".join(f"{k} {v['score']:.3f}" for k, v in sorted(scored.items(), key=lambda kv: -kv[1]["score"]))
             + (" (the scoring sample is unchanged since the last choice: reused)" if choice.get("reused") else ""))
    elif choice:
        line(console, f"  chose {choice['chosen']}: {choice['by']}")
    sep = s.get("separation")
    if sep:
        line(console, f"  labeled classes: leave-one-out {sep['k']}-NN accuracy {sep['knn_accuracy']:.3f} on {sep['n']} samples (chance {sep['chance']:.3f})")
    for sid in s.get("skipped_ids", []):
        line(console, f"  skipped {sid}: {s.get('skip_errors', {}).get(sid, 'unreadable')}")
    if s.get("n_skipped", 0) > len(s.get("skipped_ids", [])):
        line(console, f"  … and {s['n_skipped'] - len(s['skipped_ids'])} more (see embeddings.parquet metadata)")


def _detect_noise(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    if s.get("task") == "multi-label":
        return _multilabel(console, res)
    line(console, f"{s['n_issues']} of {s['n_analysed']} labeled samples flagged ({s['issue_rate']:.1%}); "
         f"estimated noise rate {s['estimated_noise_rate']:.1%} (probabilities: {s['probs']}, filter: {s['filter_by']})", head="detect-noise")
    choice = s.get("probs_choice") or {}
    if len(choice.get("scores", {})) > 1:
        line(console, f"  kept {choice['chosen']} by {choice['by']}: " + "; ".join(
            f"{k} accuracy {v['accuracy']:.3f}, log-likelihood {v['log_likelihood']:.3f}" for k, v in choice["scores"].items()))
    if s.get("dynamics"):
        d = s["dynamics"]
        line(console, f"  dynamics: {d['n_hard_to_learn']} hard to learn of {d['n_with_dynamics']} with dynamics ({d['file']})")
    if s["issues_by_type"]:
        line(console, "  by type: " + ", ".join(f"{k} {v}" for k, v in s["issues_by_type"].items()))
    if s.get("reported_not_issues"):
        line(console, "  reported, not counted: " + ", ".join(f"{k} {v}" for k, v in s["reported_not_issues"].items()))
    if s["issues_by_class"]:
        line(console, "  by given label: " + ", ".join(f"{k} {v}" for k, v in list(s["issues_by_class"].items())[:10]))
    if s["confused_pairs"]:
        line(console, "  most confused (given -> true): " + ", ".join(f"{p['given']}->{p['true']} ({p['joint']:.1%})" for p in s["confused_pairs"]))
    if s["top_issues"]:
        t = _table("top label issues", ("rank", "id", "given", "suggested", "quality", "type"))
        for r in s["top_issues"]:
            _row(t, r["rank"], r["id"], r["given"], r["suggested"], f"{r['quality']:.3f}", r["type"])
        console.print(t)
    if "review_file" in s:
        line(console, f"  review queue: {s['review_rows']} rows in {s['review_file']}")
    line(console, f"  wrote {', '.join(res.outputs)}")


def _prototype(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    if s.get("task") == "multi-label":
        return _multilabel(console, res)
    kinds = ", ".join(f"{v} {k}" for k, v in s["kinds"].items())
    line(console, f"{s['n_prototypes']} prototypes ({kinds}) for {s['n_classes']} classes; "
         f"{s['n_dropped_unclean']} labeled samples dropped as unclean; {s['refine_iterations']} refinement iterations", head="prototype")
    if s.get("clean_stood_down"):
        line(console, f"  the clean check doubted {s['n_doubted_unclean']} labeled samples, too many to be wrong labels "
             "rather than a hard embedding: it stood down and kept them all (--no-clean turns it off)")
    t = _table("per class", ("class", "prototypes", "support", "spread"))
    for r in s["per_class"][:30]:
        _row(t, r["class"], r["prototypes"], r["support"], "" if r["spread"] is None else f"{r['spread']:.3f}")
    console.print(t)
    if s["confusable_pairs"]:
        line(console, "  most confusable: " + ", ".join(f"{p['a']}~{p['b']} ({p['cosine']:.3f})" for p in s["confusable_pairs"]))


def _pseudolabel(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    if s.get("task") == "multi-label":
        return _multilabel(console, res)
    cov = "n/a" if s["coverage"] is None else f"{s['coverage']:.1%}"
    line(console, f"{s['n_accepted']} of {s['n_unlabeled']} unlabeled samples accepted (coverage {cov}) "
         f"by {s['method']}, {s['threshold_rule']} threshold {s['threshold']}", head="pseudolabel")
    if s.get("n_seeds_dropped"):
        line(console, f"  {s['n_seeds_dropped']} labeled samples left out as seeds: confident learning doubts their labels")
    if (s.get("knn") or {}).get("memory_budget") or (s.get("knn") or {}).get("fell_back"):
        line(console, f"  kNN graph: {s['knn']['reason']}")
    if ((s.get("novelty") or {}).get("knn") or {}).get("memory_budget"):
        line(console, f"  novelty search of the labeled rows: {s['novelty']['knn']['reason']}")
    if s["ece"] is not None:
        line(console, f"  calibration: temperature {s['temperature']}, held-out ECE {s['ece']:.3f} (before {s['ece_uncalibrated']:.3f}, {s['n_calibration']} labeled samples)")
    line(console, "  accepted per class: " + ", ".join(f"{c} {n}" for c, n in list(s["accepted_per_class"].items())[:30]))
    hist = s["confidence_histogram"]
    peak = max(hist) or 1
    line(console, "  confidence histogram:")
    for i, n in enumerate(hist):
        line(console, f"    {i / 10:.1f}-{(i + 1) / 10:.1f} {'█' * round(30 * n / peak):<30} {n}")


def _multilabel(console: Console, res) -> None:
    """prototype, pseudolabel and detect-noise on multi-label data (issue 16)."""
    s: dict[str, Any] = res.summary
    if res.stage == "prototype":
        line(console, f"{s['n_prototypes']} prototypes for {s['n_classes']} classes (multi-label: one per class from every sample carrying it)", head="prototype")
        if s["classes_without_samples"]:
            line(console, "  no labeled sample carries: " + ", ".join(s["classes_without_samples"][:10]))
    elif res.stage == "pseudolabel":
        cov = "n/a" if s["coverage"] is None else f"{s['coverage']:.1%}"
        line(console, f"{s['n_accepted']} of {s['n_unlabeled']} unlabeled samples accepted (coverage {cov}), multi-label: "
             f"{s['mean_labels_per_sample']} labels a sample, {s['n_empty_label_sets']} with none", head="pseudolabel")
        t = _table("per class", ("class", "threshold", "held-out precision", "held-out recall", "pseudo-labeled"))
        for r in s["per_class"][:30]:
            _row(t, r["class"], f"{r['threshold']:.3f}", "" if r["held_out_precision"] is None else f"{r['held_out_precision']:.3f}",
                 "" if r["held_out_recall"] is None else f"{r['held_out_recall']:.3f}", r["n_pseudolabeled"])
        console.print(t)
    else:
        line(console, f"{s['n_issues']} of {s['n_analysed']} labeled samples flagged ({s['issue_rate']:.1%}), multi-label: "
             f"{s['n_labels_to_add']} labels to add, {s['n_labels_to_remove']} to remove ({s['method']})", head="detect-noise")
        t = _table("per class", ("class", "given", "to add", "to remove"))
        for r in s["per_class"][:30]:
            _row(t, r["class"], r["given"], r["to_add"], r["to_remove"])
        console.print(t)
        if "review_file" in s:
            line(console, f"  review queue: {s['review_rows']} rows in {s['review_file']}")
    line(console, f"  wrote {', '.join(res.outputs)}")


def pipeline(console: Console, results) -> None:
    for res in results:
        result(console, res)
    t = _table("labelkit run", ("stage", "result", "time"))
    t.title_justify = "center"
    for res in results:
        state = Text("skipped (up to date)", style="green") if res.skipped else Text("ran", style="cyan")
        _row(t, res.stage, state, "" if res.skipped else f"{res.summary.get('wall_time_s', 0):.1f} s")
    console.print(t)


def status(console: Console, rows) -> None:
    t = _table("labelkit status", ("stage", "state", "why", "wall time", "finished"))
    t.title_justify = "center"
    for r in rows:
        _row(t, r.stage, Text(r.state, style=STATE_STYLE[r.state]), r.reason, "" if r.wall_time_s is None else f"{r.wall_time_s:.1f} s", r.finished_at)
    console.print(t)


RENDERERS = {"embed": _embed, "prototype": _prototype, "pseudolabel": _pseudolabel, "detect-noise": _detect_noise}


def doctor(console: Console, report: dict[str, Any]) -> None:
    """``labelkit doctor``'s report: versions, devices, faiss, Ray, weights, network, disk, then what the config needs."""
    d = report["devices"]
    line(console, f"{report['labelkit']} on Python {report['python']} ({report['platform']})", head="labelkit")
    line(console, ", ".join(f"{k} {v or 'not installed'}" for k, v in report["packages"].items()), head="packages")
    cuda = d["cuda"]
    gpus = "; ".join(f"cuda:{g['index']} {g['name']} {g['memory_gb']} GiB" for g in cuda["devices"]) or "none"
    line(console, f"CUDA {gpus} (torch CUDA build {cuda['torch_cuda'] or 'none'}); MPS {'yes' if d['mps'] else 'no'}; "
                  f"CPU {d['cpu_cores_usable']} of {d['cpu_cores']} cores usable; RAM {d['memory_gb']} GiB "
                  f"({d['memory_available_gb']} GiB available; --memory-budget auto: "
                  f"{'no budget' if d.get('memory_budget_auto_gb') is None else str(d['memory_budget_auto_gb']) + ' GB'})", head="devices")
    f = report["faiss"]
    line(console, f"{f['version']}, GPU build {'yes' if f['gpu_build'] else 'no'}, {f['gpus']} GPU(s)" if f["installed"] else "not installed",
         head="faiss")
    r = report["ray"]
    where = "" if r["reachable"] is None else f"; {r['address']} {'reachable' if r['reachable'] else 'NOT reachable'}"
    line(console, (f"{r['version']}{where} ({r.get('detail', '')})" if r["installed"] else "not installed (pip install 'labelkit-ml[ray]')"),
         head="ray")
    t = _table("embedder weights", ["model", "present", "from"])
    for e in report["embedders"]:
        _row(t, e["model"], Text("yes", style="green") if e["present"] else Text("no", style="red"), e["weights"] or e["detail"])
    console.print(t)
    n = report["network"]
    line(console, "not checked" if n["reachable"] is None else f"{'reachable' if n['reachable'] else 'NOT reachable'} ({n['detail']})", head="network")
    line(console, f"{report['disk']['free_gb']} GiB free of {report['disk']['total_gb']} GiB under {report['disk']['path']}", head="disk")
    doctor_needs(console, report)


def doctor_needs(console: Console, report: dict[str, Any]) -> None:
    """What the config needs, each ``ok`` or ``missing`` (with how to get it)."""
    for need in report["needs"]:
        style = "green" if need["ok"] else "bold red"
        console.print(Text.assemble(("ok" if need["ok"] else "missing", style), f": {need['what']} ({need['detail']})"))
        if need["hint"]:
            console.print(Text(f"  try: {need['hint']}", style="yellow"))
