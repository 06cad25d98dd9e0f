"""The one stage runner (labelkit.stages._runner) with toy declarations: skip, summary, upstream, refinement."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from labelkit import artifacts
from labelkit.config import DatasetConfig, ReportConfig
from labelkit.stages import _runner
from labelkit.stages._common import RunContext
from labelkit.workspace import Workspace, file_fingerprint
from tests.conftest import write_csv


@pytest.fixture
def ctx(tmp_path):
    data = write_csv(tmp_path / "d", "id,text,label\n0,a b,x\n1,c d,y\n2,e f,\n")
    return RunContext(Workspace.open(data), DatasetConfig())


def _toy(calls: list[str], name: str = "toy", output: str = "toy.parquet", **kw) -> _runner.Stage:
    def build(job: _runner.Job) -> dict:
        calls.append(name)
        artifacts.write_table(job.ws.path(output), pa.table({"n": [len(job.samples.table)]}), {"params": job.params})
        return {"n": len(job.samples.table), "warnings": []}

    return _runner.Stage(name, ReportConfig, build, outputs=(output,), **kw)


def test_second_run_is_skipped_with_the_summary_the_manifest_recorded(ctx):
    calls = []
    spec = _toy(calls)
    first = _runner.run(ctx, spec, ReportConfig())
    assert (first.skipped, first.reason, first.summary["n"], calls) == (False, "never run", 3, ["toy"])
    record = json.loads(ctx.ws.path("manifest.json").read_text())["stages"]["toy"]
    assert record["summary"] == {"n": 3, "warnings": []} and record["node"] == "toy"
    again = _runner.run(ctx, spec, ReportConfig())
    assert (again.skipped, again.reason, again.summary, calls) == (True, "up to date", {"n": 3, "warnings": []}, ["toy"])
    assert _runner.run(ctx, spec, ReportConfig(gallery=3)).reason == "parameters changed"
    assert _runner.run(ctx, spec, ReportConfig(gallery=3), force=True).reason == "--force"
    assert calls == ["toy"] * 3


def test_changed_data_reruns_and_a_record_without_summary_is_rebuilt(ctx):
    calls = []
    spec = _toy(calls)
    _runner.run(ctx, spec, ReportConfig())
    write_csv(ctx.ws.data, "id,text,label\n0,a b,x\n1,c d,y\n")
    assert _runner.run(ctx, spec, ReportConfig()).reason == f"input {artifacts.SAMPLES} changed"
    m = json.loads(ctx.ws.path("manifest.json").read_text())
    del m["stages"]["toy"]["summary"]  # as an older labelkit wrote it
    ctx.ws.path("manifest.json").write_text(json.dumps(m))
    res = _runner.run(ctx, spec, ReportConfig())
    assert not res.skipped and "records no summary" in res.reason and res.summary["n"] == 2


def test_a_refining_node_satisfies_its_base_as_a_pipeline_step_only(ctx):
    calls = []
    base = _toy(calls, "toy")

    def more(job: _runner.Job) -> None:  # the refining node also reads one more thing
        job.params_fp += "+more"

    refined = _toy(calls, "toy", node="toy --more", refines="toy", in_pipeline=False, key=more)
    _runner.run(ctx, base, ReportConfig())
    assert _runner.run(ctx, refined, ReportConfig()).reason == "parameters changed"
    # The base run as a pipeline step keeps the refined output; asked for by name, it reruns.
    assert _runner.run(ctx, base, ReportConfig(), step=True).skipped
    assert _runner.run(ctx, base, ReportConfig()).reason == "parameters changed"
    assert calls == ["toy"] * 3


def test_the_dag_is_declared_once_and_acyclic():
    from labelkit.stages import pipeline

    nodes = _runner.nodes()
    assert [s.id for s in pipeline.pipeline_nodes()] == pipeline.ORDER
    assert {s.id for s in nodes} >= {"detect-noise --dynamics"}
    position = {s.id: i for i, s in enumerate(pipeline.pipeline_nodes())}
    for s in pipeline.pipeline_nodes():  # every producer of what a stage reads comes before it
        for name in s.reads(s.config()):
            assert position[_runner.producer(name).id] < position[s.id], (s.id, name)
    assert _runner.producer(artifacts.EMBEDDINGS).id == "embed" and _runner.producer(artifacts.SAMPLES) is None


def test_a_declared_user_file_is_fingerprinted_in_the_background_and_a_change_reruns(ctx, tmp_path):
    calls = []
    user = tmp_path / "probs.bin"
    user.write_bytes(b"a" * 5_000_000)
    spec = _toy(calls, files=lambda cfg: {"user_file": user})
    assert _runner.run(ctx, spec, ReportConfig(), force=True).reason == "--force"  # hashed beside the build, recorded after it
    recorded = json.loads(ctx.ws.path("manifest.json").read_text())["stages"]["toy"]["inputs"]["user_file"]
    assert recorded == file_fingerprint(user)
    assert _runner.run(ctx, spec, ReportConfig()).skipped
    user.write_bytes(b"a" * 4_999_999 + b"b")  # same size, one byte changed
    assert _runner.run(ctx, spec, ReportConfig()).reason == "input user_file changed"
    assert calls == ["toy", "toy"]
    user.unlink()  # a missing file (which no key hook refused): the error of hashing it
    with pytest.raises(FileNotFoundError):
        _runner.run(ctx, spec, ReportConfig())
