"""Soak: the pipeline again and again on a perturbed copy of examples/digits, with random kills and edits.

    python benchmarks/soak.py                                  # 20 iterations on all 1,797 digits
    python benchmarks/soak.py --iterations 4 --n-unlabeled 300 # a quick one (every labeled digit + 300)
    python benchmarks/soak.py --layout manifest --seed 3       # labels.csv instead of class folders

Not part of the test suite (it takes minutes). One dataset folder lives through every iteration.
Each iteration draws, from a seeded generator:

- an **edit** made before the run: ``replace`` an image with another picture (same path),
  ``add`` an image, ``delete`` one, ``relabel`` one (class folders: move the file to another class
  folder or out of/into ``unlabeled/``; manifest: change its label cell, ids stay), damage a derived
  artifact (``truncate embeddings.parquet`` / ``samples.parquet`` / ``pseudolabels.parquet``,
  ``garble embeddings.arrow``, ``delete embeddings.arrow``, ``garble manifest.json``), or ``none``;
- whether to **kill** ``labelkit run DATA --until distill`` (SIGKILL to its process group) after a
  random fraction of the previous run's wall time; a killed run is followed by a plain rerun.

After each completed run it checks that nothing is lost or stale:

- the run exits 0, with no traceback and no "internal error" line;
- ``labelkit status`` reports every stage through distill as done; every Parquet file is readable;
  no ``embeddings.parts/`` is left;
- samples.parquet holds exactly the current files, each with its current label;
- embeddings.parquet holds exactly those ids, each vector within 1e-6 of a fresh embedding of the
  file as it is now (pixels:8 computed here with Pillow and numpy, not with labelkit's code);
- pseudolabels.parquet covers exactly the unlabeled samples, label_issues.parquet exactly the
  labeled ones with their current label as ``given_label``; knn.parquet has a row per embedding;
  the student's classes are the current classes.

Temporary files left by killed atomic writes (``.NAME.*.tmp``) are counted in the notes, not
failed: they are debris, not artifacts. It prints a table (iteration, edit, killed at, result,
notes) and exits 1 when any iteration failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
STAGES = ["embed", "prototype", "pseudolabel", "detect-noise", "distill"]
CONFIG = """\
[embed]
model = "pixels:8"
batch_size = 16
row_group_size = 64

[detect-noise]
probs = "{probs}"

[distill]
epochs = 5
student = "mlp"
folds = 2
"""
EDITS = ["none", "replace", "add", "delete", "relabel", "truncate embeddings.parquet", "truncate samples.parquet",
         "truncate pseudolabels.parquet", "garble embeddings.arrow", "delete embeddings.arrow", "garble manifest.json"]
# Edits to the data are drawn more often than damage to the workspace: 10% none, 60% data, 30% damage.
WEIGHTS = np.array([0.10] + [0.15] * 4 + [0.05] * 6)
SIDE = 8
ATOL = 1e-6


# -- the dataset as this script knows it ------------------------------------------------------


class Dataset:
    """The dataset folder and what it should hold: id -> label (None = unlabeled)."""

    def __init__(self, folder: Path, layout: str):
        self.folder, self.layout = folder, layout
        self.labels: dict[str, str | None] = {}

    @classmethod
    def copy_of_digits(cls, dst: Path, layout: str, n_unlabeled: int) -> Dataset:
        ds = cls(dst, layout)
        dst.mkdir(parents=True)
        for d in sorted(p for p in DIGITS.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(d.glob("*.png"))
            if d.name == "unlabeled" and n_unlabeled >= 0:
                files = files[:n_unlabeled]
            (dst / d.name).mkdir()
            for f in files:
                shutil.copy2(f, dst / d.name / f.name)
                ds.labels[f"{d.name}/{f.name}"] = None if d.name == "unlabeled" else d.name
        ds.save()
        return ds

    @property
    def classes(self) -> list[str]:
        return sorted({v for v in self.labels.values() if v is not None})

    def save(self) -> None:
        """The manifest layout keeps labels.csv (path,label) in step with ``labels``."""
        if self.layout != "manifest":
            return
        with open(self.folder / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            for sid in sorted(self.labels):
                w.writerow([sid, self.labels[sid] or ""])

    def path(self, sid: str) -> Path:
        return self.folder / sid


def picture(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def another_picture(ds: Dataset, rng: np.random.Generator, not_like: np.ndarray | None = None) -> np.ndarray:
    """A different 8x8 picture: another digit, mirrored (so it matches no file already there)."""
    ids = sorted(ds.labels)
    while True:
        src = picture(ds.path(ids[rng.integers(len(ids))]))
        out = np.ascontiguousarray(src[:, ::-1] if rng.random() < 0.5 else src[::-1, :])
        if not_like is None or not np.array_equal(out, not_like):
            return out


def edit(ds: Dataset, what: str, it: int, rng: np.random.Generator) -> str:
    """Apply one edit; a short description of what changed."""
    ws = ds.folder / ".labelkit"
    ids = sorted(ds.labels)
    if what == "none":
        return ""
    if what == "replace":
        sid = ids[rng.integers(len(ids))]
        Image.fromarray(another_picture(ds, rng, picture(ds.path(sid)))).save(ds.path(sid))
        return sid
    if what == "add":
        label = [None, *ds.classes][rng.integers(len(ds.classes) + 1)]
        sid = f"{label or 'unlabeled'}/soak_{it:03d}.png"
        Image.fromarray(another_picture(ds, rng)).save(ds.path(sid))
        ds.labels[sid] = label
        ds.save()
        return sid
    if what == "delete":
        sid = ids[rng.integers(len(ids))]
        ds.path(sid).unlink()
        del ds.labels[sid]
        ds.save()
        return sid
    if what == "relabel":
        sid = ids[rng.integers(len(ids))]
        old = ds.labels[sid]
        new = [c for c in [None, *ds.classes] if c != old][rng.integers(len(ds.classes))]
        if ds.layout == "manifest":
            ds.labels[sid] = new
            ds.save()
            return f"{sid}: {old} -> {new}"
        dst = f"{new or 'unlabeled'}/{Path(sid).name}"
        if dst in ds.labels:
            dst = f"{new or 'unlabeled'}/moved_{it:03d}_{Path(sid).name}"
        ds.path(sid).rename(ds.path(dst))
        del ds.labels[sid]
        ds.labels[dst] = new
        return f"{sid} -> {dst}"
    # Damage to a derived artifact (only once there is a workspace).
    verb, name = what.split(" ", 1)
    target = ws / name
    if not target.exists():
        return "(absent)"
    if verb == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif verb == "garble":
        data = bytearray(target.read_bytes())
        for i in rng.integers(0, len(data), size=max(8, len(data) // 50)):
            data[i] = int(rng.integers(256))
        target.write_bytes(bytes(data))
    elif verb == "delete":
        target.unlink()
    return ""


# -- running and killing --------------------------------------------------------------------


def labelkit(*args) -> list[str]:
    return [sys.executable, "-m", "labelkit", *map(str, args)]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False


def run(args: list[str], *, kill_after: float | None = None, timeout: float = 1800) -> Run:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(args, stdout=out, stderr=err, text=True, start_new_session=True)
        t0 = time.monotonic()
        killed = False
        try:
            while p.poll() is None:
                el = time.monotonic() - t0
                if kill_after is not None and el >= kill_after:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    killed = True
                    break
                if el > timeout:
                    raise RuntimeError(f"{args} still running after {timeout} s")
                time.sleep(0.005)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return Run(p.returncode, out.read(), err.read(), seconds, killed)


# -- checking -------------------------------------------------------------------------------


def fresh_embedding(path: Path) -> np.ndarray:
    """pixels:8 as documented: grayscale, bilinear to 8x8, x / 255 - 0.5, flattened, L2-normalised."""
    with Image.open(path) as img:
        g = img.convert("L")
        if g.size != (SIDE, SIDE):
            g = g.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        v = np.asarray(g, dtype=np.float32).reshape(-1) / 255.0 - 0.5
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


@dataclass
class Check:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def _ids(col: list) -> list[str]:
    return [str(x) for x in col]


def check(ds: Dataset, config: Path, final: Run) -> Check:
    c = Check()
    ws = ds.folder / ".labelkit"
    c.expect(final.returncode == 0, f"run exited {final.returncode}: {final.stderr.strip().splitlines()[-1:] if final.stderr.strip() else ''}")
    c.expect("Traceback" not in final.stderr, "a traceback on stderr")
    c.expect("internal error" not in final.stderr, "an 'internal error' line on stderr")
    if final.returncode != 0:
        return c
    try:
        summary = {s["stage"]: s for s in json.loads(final.stdout)["stages"]}
        e = summary.get("embed", {})
        ran = [s for s in STAGES if s in summary and not summary[s].get("skipped")]
        c.notes.append("ran " + (", ".join(ran) or "nothing"))
        if "embed" in ran:
            c.notes.append(f"embed: {e.get('n_embedded', 0)} new, {e.get('n_reused', 0)} reused, {e.get('n_changed', 0)} changed")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        c.failures.append(f"run --json printed no summary ({type(err).__name__})")
    st = run(labelkit("status", ds.folder, "--config", config, "--json"))
    try:
        states = {s["stage"]: (s["state"], s.get("reason", "")) for s in json.loads(st.stdout)["stages"]}
        for s in STAGES:
            c.expect(states.get(s, ("absent",))[0] == "done", f"status {s}: {states.get(s)}")
    except (json.JSONDecodeError, KeyError) as err:
        c.failures.append(f"status --json unreadable ({type(err).__name__}): {st.stderr.strip()[-200:]}")
    tables = {}
    for p in sorted(q for q in ws.rglob("*.parquet") if not q.name.startswith(".")):
        try:
            tables[str(p.relative_to(ws))] = pq.read_table(p)
        except Exception as err:  # any failure to read is the finding
            c.failures.append(f"{p.relative_to(ws)} unreadable: {type(err).__name__}")
    c.expect(not (ws / "embeddings.parts").exists(), "embeddings.parts/ left after a completed run")
    debris = [p.name for p in ws.rglob("*.tmp")]
    if debris:
        c.notes.append(f"{len(debris)} temporary file(s) left: {', '.join(sorted(debris)[:3])}")

    want = ds.labels
    labeled = {k for k, v in want.items() if v is not None}
    if "samples.parquet" in tables:
        t = tables["samples.parquet"].to_pydict()
        got = dict(zip(_ids(t["id"]), t["label"]))
        c.expect(set(got) == set(want), f"samples: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} extra")
        wrong = [k for k in set(got) & set(want) if got[k] != want[k]]
        c.expect(not wrong, f"samples: {len(wrong)} with a stale label, e.g. {sorted(wrong)[:2]}")
    if "embeddings.parquet" in tables:
        t = tables["embeddings.parquet"]
        ids = _ids(t.column("id").to_pylist())
        c.expect(set(ids) == set(want) and len(ids) == len(set(ids)),
                 f"embeddings: {len(set(want) - set(ids))} missing, {len(set(ids) - set(want))} extra, {len(ids) - len(set(ids))} duplicated")
        vecs = np.asarray(t.column("embedding").to_pylist(), dtype=np.float32)
        stale = [sid for sid, v in zip(ids, vecs) if sid in want and not np.allclose(v, fresh_embedding(ds.path(sid)), rtol=0, atol=ATOL)]
        c.expect(not stale, f"embeddings: {len(stale)} stale vector(s), e.g. {stale[:2]}")
        if "knn.parquet" in tables:
            c.expect(tables["knn.parquet"].num_rows == len(ids), f"knn.parquet: {tables['knn.parquet'].num_rows} rows for {len(ids)} embeddings")
    if "pseudolabels.parquet" in tables:
        got = set(_ids(tables["pseudolabels.parquet"].column("id").to_pylist()))
        c.expect(got == set(want) - labeled, f"pseudolabels: {len((set(want) - labeled) - got)} unlabeled missing, {len(got - (set(want) - labeled))} extra")
    if "label_issues.parquet" in tables:
        t = tables["label_issues.parquet"].to_pydict()
        got = dict(zip(_ids(t["id"]), t["given_label"]))
        c.expect(set(got) == labeled, f"label_issues: {len(labeled - set(got))} labeled missing, {len(set(got) - labeled)} extra")
        wrong = [k for k in set(got) & labeled if got[k] != want[k]]
        c.expect(not wrong, f"label_issues: {len(wrong)} with a stale given_label, e.g. {sorted(wrong)[:2]}")
    for name in ("samples.parquet", "embeddings.parquet", "pseudolabels.parquet", "label_issues.parquet", "knn.parquet"):
        c.expect(name in tables, f"{name} missing")
    cfg = ws / "student" / "config.json"
    try:
        c.expect(json.loads(cfg.read_text())["classes"] == ds.classes, "student: classes differ from the data's")
    except (OSError, json.JSONDecodeError, KeyError) as err:
        c.failures.append(f"student/config.json: {type(err).__name__}")
    return c


# -- the loop -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["folders", "manifest"], default="folders",
                    help="class folders as examples/digits ships, or a labels.csv manifest (relabel keeps ids)")
    ap.add_argument("--n-unlabeled", type=int, default=-1, help="unlabeled digits to copy (-1 = all 1,618)")
    ap.add_argument("--kill-rate", type=float, default=0.5, help="fraction of iterations whose run is killed")
    ap.add_argument("--probs", default="knn", help="detect-noise --probs (auto is the default and slower)")
    ap.add_argument("--workdir", type=Path, help="keep the dataset here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="labelkit-soak-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        config = work / "soak.toml"
        config.write_text(CONFIG.format(probs=args.probs))
        ds = Dataset.copy_of_digits(work / "digits", args.layout, args.n_unlabeled)
        print(f"soak: {args.iterations} iterations, seed {args.seed}, {len(ds.labels)} digits ({args.layout}), "
              f"kill rate {args.kill_rate}, work in {work}", flush=True)
        rows, n_failed, last_s = [], 0, None
        for it in range(args.iterations):
            what = EDITS[rng.choice(len(EDITS), p=WEIGHTS / WEIGHTS.sum())] if it > 0 else "none"
            detail = edit(ds, what, it, rng)
            cmd = labelkit("run", ds.folder, "--until", "distill", "--config", config, "--json")
            killed_at = "-"
            if last_s is not None and rng.random() < args.kill_rate:
                after = float(rng.uniform(0.05, 1.0)) * last_s
                k = run(cmd, kill_after=after)
                if k.killed:
                    st = run(labelkit("status", ds.folder, "--config", config, "--json"))
                    try:
                        done = [s["stage"] for s in json.loads(st.stdout)["stages"] if s["state"] == "done"]
                    except (json.JSONDecodeError, KeyError):
                        done = ["?"]
                    running = next((f"in {s}" for s in STAGES if s not in done), "all stages done")
                    killed_at = f"{after:.1f} s ({running})"
                else:
                    killed_at = f"ended first ({k.seconds:.1f} s)"
            final = run(cmd)
            if not final.returncode:
                last_s = final.seconds
            c = check(ds, config, final)
            n_failed += bool(c.failures)
            result = "ok" if not c.failures else "FAIL: " + "; ".join(c.failures)
            label = what + (f" {detail}" if detail else "")
            rows.append((it, label, killed_at, result, f"{final.seconds:.0f} s; " + "; ".join(c.notes)))
            print(f"{it:>3}  {label[:48]:<48}  {killed_at:<26}  {result}  [{rows[-1][4]}]", flush=True)
        print()
        print("| iteration | edit | killed at | result | notes |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print("| " + " | ".join(str(x).replace("|", "/") for x in r) + " |")
        print(f"\n{args.iterations - n_failed} of {args.iterations} iterations ok")
        return 1 if n_failed else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
