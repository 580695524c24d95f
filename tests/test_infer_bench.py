"""benchmarks/infer_pipeline.py, at toy sizes: it runs, records what it measured, and says when
a variant could not run (GPU decoding on this CPU)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("skimage.data", reason="the benchmark's corpus uses scikit-image's photos")
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_pipeline_benchmark_records_every_round(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("infer_pipeline",
                                                  REPO / "benchmarks/infer_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run.json"
    assert module.main(["--images", "6", "--model", "resnet18", "--batch-size", "3",
                        "--device", "cpu", "--workers", "0", "--decode", "cpu", "gpu",
                        "--rounds", "2", "--json", str(out), "--md", str(tmp_path / "run.md")]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 6 and record["machine"]["torch"]
    assert record["skipped"] == {"job/gpu": "no CUDA device"}
    assert [(r["round"], r["variant"]) for r in record["rounds"]] == [
        (0, "job/cpu/w0"), (0, "model"), (1, "job/cpu/w0"), (1, "model")]  # interleaved
    for row in record["rounds"]:
        assert row["images_per_s"] > 0 and row["load_average"]
        if row["variant"] != "model":
            assert row["ok"] == 6 and row["errors"] == 0 and row["times_s"]["model"] > 0
    table = (tmp_path / "run.md").read_text()
    assert "| job/cpu/w0 |" in table and "| model |" in table
    assert "job/gpu: skipped (no CUDA device)" in capsys.readouterr().out
