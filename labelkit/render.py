"""Rich rendering of stage results for people (the CLI's only output besides --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STATE_STYLE = {"done": "green", "stale": "yellow", "missing": "red"}


def result(console: Console, res) -> None:
    for up in res.upstream:
        result(console, up)
    if res.skipped:
        console.print(f"[bold]{res.stage}[/]: {res.reason}, skipping (use --force to rerun)")
        if res.summary and res.stage in RENDERERS:
            RENDERERS[res.stage](console, res)
        return
    if "missing" in res.reason:
        console.print(f"[bold]{res.stage}[/]: {res.reason}")
    renderer = RENDERERS.get(res.stage, _generic)
    renderer(console, res)


_WHY = {"never run": "first run", "--force": "forced"}


def why_ran(reason: str) -> str:
    """A stage's stale reason, worded as why it ran."""
    return _WHY.get(reason, reason)


def _generic(console: Console, res) -> None:
    console.print(f"[bold]{res.stage}[/]: ran ({why_ran(res.reason)}); wrote {', '.join(res.outputs)}")
    for k, v in res.summary.items():
        if not isinstance(v, (dict, list)):
            console.print(f"  {k}: {v}")


def _embed(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    console.print(
        f"[bold]embed[/]: {s['n_embedded']} embedded, {s['n_reused']} reused, {s['n_skipped']} skipped "
        f"with {s['model']} ({s['dim']}-d) in {s.get('wall_time_s', 0)} s; wrote {', '.join(res.outputs)}"
    )
    for sid in s.get("skipped_ids", []):
        console.print(f"  skipped {sid}: {s.get('skip_errors', {}).get(sid, 'unreadable')}", highlight=False)
    if s.get("n_skipped", 0) > len(s.get("skipped_ids", [])):
        console.print(f"  … and {s['n_skipped'] - len(s['skipped_ids'])} more (see embeddings.parquet metadata)")


def _detect_noise(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    console.print(
        f"[bold]detect-noise[/]: {s['n_issues']} of {s['n_analysed']} labeled samples flagged ({s['issue_rate']:.1%}); "
        f"estimated noise rate {s['estimated_noise_rate']:.1%} (probabilities: {s['probs']}, filter: {s['filter_by']})"
    )
    choice = s.get("probs_choice") or {}
    if len(choice.get("scores", {})) > 1:
        console.print(f"  kept {choice['chosen']} by {choice['by']}: " + "; ".join(
            f"{k} accuracy {v['accuracy']:.3f}, log-likelihood {v['log_likelihood']:.3f}" for k, v in choice["scores"].items()))
    if s.get("dynamics"):
        d = s["dynamics"]
        console.print(f"  dynamics: {d['n_hard_to_learn']} hard to learn of {d['n_with_dynamics']} with dynamics ({d['file']})")
    if s["issues_by_type"]:
        console.print("  by type: " + ", ".join(f"{k} {v}" for k, v in s["issues_by_type"].items()))
    if s.get("reported_not_issues"):
        console.print("  reported, not counted: " + ", ".join(f"{k} {v}" for k, v in s["reported_not_issues"].items()))
    if s["issues_by_class"]:
        console.print("  by given label: " + ", ".join(f"{k} {v}" for k, v in list(s["issues_by_class"].items())[:10]))
    if s["confused_pairs"]:
        console.print("  most confused (given -> true): " + ", ".join(f"{p['given']}->{p['true']} ({p['joint']:.1%})" for p in s["confused_pairs"]))
    if s["top_issues"]:
        t = Table(title="top label issues", title_justify="left")
        for col in ("rank", "id", "given", "suggested", "quality", "type"):
            t.add_column(col)
        for r in s["top_issues"]:
            t.add_row(str(r["rank"]), r["id"], r["given"], r["suggested"], f"{r['quality']:.3f}", str(r["type"]))
        console.print(t)
    if "review_file" in s:
        console.print(f"  review queue: {s['review_rows']} rows in {s['review_file']}")
    console.print(f"  wrote {', '.join(res.outputs)}")


def _prototype(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    kinds = ", ".join(f"{v} {k}" for k, v in s["kinds"].items())
    console.print(
        f"[bold]prototype[/]: {s['n_prototypes']} prototypes ({kinds}) for {s['n_classes']} classes; "
        f"{s['n_dropped_unclean']} labeled samples dropped as unclean; {s['refine_iterations']} refinement iterations"
    )
    t = Table(title="per class", title_justify="left")
    for col in ("class", "prototypes", "support", "spread"):
        t.add_column(col)
    for r in s["per_class"][:30]:
        t.add_row(r["class"], str(r["prototypes"]), str(r["support"]), "" if r["spread"] is None else f"{r['spread']:.3f}")
    console.print(t)
    if s["confusable_pairs"]:
        console.print("  most confusable: " + ", ".join(f"{p['a']}~{p['b']} ({p['cosine']:.3f})" for p in s["confusable_pairs"]))


def _pseudolabel(console: Console, res) -> None:
    s: dict[str, Any] = res.summary
    cov = "n/a" if s["coverage"] is None else f"{s['coverage']:.1%}"
    console.print(
        f"[bold]pseudolabel[/]: {s['n_accepted']} of {s['n_unlabeled']} unlabeled samples accepted (coverage {cov}) "
        f"by {s['method']}, {s['threshold_rule']} threshold {s['threshold']}"
    )
    if s.get("n_seeds_dropped"):
        console.print(f"  {s['n_seeds_dropped']} labeled samples left out as seeds: confident learning doubts their labels")
    if s["ece"] is not None:
        console.print(f"  calibration: temperature {s['temperature']}, held-out ECE {s['ece']:.3f} (before {s['ece_uncalibrated']:.3f}, {s['n_calibration']} labeled samples)")
    console.print("  accepted per class: " + ", ".join(f"{c} {n}" for c, n in list(s["accepted_per_class"].items())[:30]))
    hist = s["confidence_histogram"]
    peak = max(hist) or 1
    console.print("  confidence histogram:")
    for i, n in enumerate(hist):
        console.print(f"    {i / 10:.1f}-{(i + 1) / 10:.1f} {'█' * round(30 * n / peak):<30} {n}")


def pipeline(console: Console, results) -> None:
    for res in results:
        result(console, res)
    t = Table(title="labelkit run")
    for col in ("stage", "result", "time"):
        t.add_column(col)
    for res in results:
        state = "[green]skipped (up to date)[/]" if res.skipped else "[cyan]ran[/]"
        t.add_row(res.stage, state, "" if res.skipped else f"{res.summary.get('wall_time_s', 0):.1f} s")
    console.print(t)


def status(console: Console, rows) -> None:
    t = Table(title="labelkit status")
    for col in ("stage", "state", "why", "wall time", "finished"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.stage, f"[{STATE_STYLE[r.state]}]{r.state}[/]", r.reason, "" if r.wall_time_s is None else f"{r.wall_time_s:.1f} s", r.finished_at)
    console.print(t)


RENDERERS = {"embed": _embed, "prototype": _prototype, "pseudolabel": _pseudolabel, "detect-noise": _detect_noise}
