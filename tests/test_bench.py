"""Fast CPU tests of the measuring code (resnet_fused.bench) and benchmarks/report.py."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from resnet_fused import bench
from resnet_fused.testing import tolerance

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_time_fn_cpu_returns_positive_median():
    calls = []

    def work():
        calls.append(1)
        return sum(range(2000))

    timing = bench.time_fn(work, "cpu", warmup=2, reps=5)
    assert len(calls) == 7  # warm-up calls are made but not timed
    assert len(timing.times) == 5
    assert all(t > 0 for t in timing.times)
    assert 0 < timing.min <= timing.median <= max(timing.times)
    assert timing.stdev >= 0


def test_time_fn_rejects_zero_reps():
    with pytest.raises(ValueError, match="reps"):
        bench.time_fn(lambda: None, "cpu", warmup=0, reps=0)


def test_check_output_detects_mismatch_and_nan():
    ref = torch.randn(4, 10, dtype=torch.float64)
    assert bench.check_output("ok", ref.float(), ref, torch.float32, "cpu") < 1e-6
    with pytest.raises(bench.MismatchError, match="relative error"):
        bench.check_output("wrong", ref * 1.01, ref, torch.float32, "cpu")
    bad = ref.clone()
    bad[0, 0] = math.nan
    with pytest.raises(bench.MismatchError):
        bench.check_output("nan", bad, ref, torch.float32, "cpu")


def _tiny_setup(batch=1, size=32):
    model = bench.make_model("resnet18")
    x = bench.make_input(batch, torch.float32, "cpu", size=size)
    return model, x


def test_measure_model_flags_a_mismatching_variant(monkeypatch):
    model, x = _tiny_setup()
    ref = bench.reference_output(model, x)
    real_build = bench.build_variant

    def build(name, model, x):
        if name == "fused-cpu":
            good = real_build(name, model, x).fn
            return bench.Variant(name, lambda: good() * 1.001)  # 1e-3 > the 1e-4 model bound
        return real_build(name, model, x)

    monkeypatch.setattr(bench.cli, "build_variant", build)
    rows = bench.measure_model(model, x, ["reference", "fused-cpu"], warmup=0, reps=1, ref=ref)
    by_name = {r["variant"]: r for r in rows}
    assert by_name["reference"]["status"] == "ok"
    assert by_name["reference"]["images_per_s"] > 0
    assert by_name["fused-cpu"]["status"] == "MISMATCH"
    assert "images_per_s" not in by_name["fused-cpu"]  # a wrong variant is never timed
    assert by_name["fused-cpu"]["rel_error"] > tolerance(torch.float32, "model")


def test_run_returns_nonzero_on_mismatch(monkeypatch, capsys):
    real_build = bench.build_variant

    def build(name, model, x):
        variant = real_build(name, model, x)
        if name == "fused-cpu":
            return bench.Variant(name, lambda: torch.full_like(variant.fn(), math.nan))
        return variant

    monkeypatch.setattr(bench.cli, "build_variant", build)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    # --device cpu: on a GPU machine the defaults would be the GPU variants (and max-autotune).
    args = parser.parse_args(["--model", "resnet18", "--batch", "1", "--size", "32",
                              "--iters", "1", "--warmup", "0", "--device", "cpu"])
    assert bench.run(args) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out
    assert "does not match the reference" in captured.err


def _cli_args(*extra):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--model", "resnet18", "--batch", "1", "--size", "32", "--iters",
                              "3", "--warmup", "0", "--device", "cpu", *extra])


def test_a_raising_variant_does_not_cost_the_table(monkeypatch, capsys):
    real_build = bench.build_variant

    def build(name, model, x):
        variant = real_build(name, model, x)
        if name == "fused-aten":
            calls = []

            def flaky():
                calls.append(1)
                if len(calls) > 1:  # passes the check, then fails while being timed
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                return variant.fn()

            return bench.Variant(name, flaky)
        if name == "fused-cpu":
            raise ValueError("cannot build this one")
        return variant

    monkeypatch.setattr(bench.cli, "build_variant", build)
    assert bench.run(_cli_args("--backends", "reference", "cpu", "aten")) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("reference",
                                                                                  "fused-"))}
    assert rows["reference"].rstrip().endswith("ok")
    assert "ERROR: ValueError: cannot build this one" in rows["fused-cpu"]
    assert "ERROR: RuntimeError: CUDA error" in rows["fused-aten"]
    assert "verdict: fused-cpu: FAILED" in out and "verdict: fused-aten: FAILED" in out


def test_interrupted_timing_prints_the_rounds_done(monkeypatch, capsys):
    real_time_fn = bench.cli.time_fn
    calls = []

    def time_fn(fn, device, warmup, reps):
        calls.append(1)
        if len(calls) == 6:  # 2 warm-up calls, then round 1 (2 calls), then SIGINT in round 2
            raise KeyboardInterrupt
        return real_time_fn(fn, device, warmup=warmup, reps=reps)

    monkeypatch.setattr(bench.cli, "time_fn", time_fn)
    assert bench.run(_cli_args("--backends", "reference", "cpu")) == 130
    out = capsys.readouterr().out
    assert "ok (interrupted, 1 rounds)" in out
    assert "verdict: fused-cpu:" in out and "the reference" in out


def test_verdict_and_legend(capsys):
    assert bench.run(_cli_args("--backends", "reference", "cpu")) == 0
    out = capsys.readouterr().out
    assert "rel. error           ||y - ref|| / ||ref||" in out and "setup s" in out
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: fused-cpu"))
    assert "x the reference (rounds' IQR" in verdict and "within bound" in verdict


def test_run_cli_with_roofline(monkeypatch, capsys, tmp_path):
    # Fixed peaks: measuring the real ones costs seconds and is not what is tested here.
    monkeypatch.setattr(bench.cli, "measure_peaks",
                        lambda device, dtype: bench.DevicePeaks("cpu", "float32", 1e10, 1e11))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--model", "resnet18", "--batch", "1", "--size", "32",
                              "--iters", "1", "--warmup", "0", "--backends", "cpu",
                              "--device", "cpu", "--roofline", "--json", str(out)])
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    assert "fused-cpu" in text and "reference" in text and "per-layer roofline" in text
    report = json.loads(out.read_text())
    assert {r["variant"] for r in report["results"]} == {"reference", "fused-cpu"}
    assert all(r["status"] == "ok" for r in report["results"])
    assert report["roofline"]["layers"][0]["layer"] == "conv1"


def test_variant_names_and_availability_on_cpu():
    assert bench.normalize_variant("cpu") == "fused-cpu"
    assert bench.normalize_variant("triton+graph") == "fused-triton+graph"
    with pytest.raises(ValueError, match="unknown variant"):
        bench.normalize_variant("tensorrt")
    assert bench.default_variants("cpu", 8) == ["reference", "fused-cpu"]
    assert "compile" in bench.default_variants("cpu", 8, include_compile=True)
    model, x = _tiny_setup()
    for name in ("cudnn-fused", "fused-cpu+graph", "fused-cuda", "fused-triton"):
        with pytest.raises(bench.Unavailable):
            bench.build_variant(name, model, x)


def test_cudnn_fused_walker_matches_reference_on_cpu():
    # On CPU tensors the module runs F.conv2d with the folded weights: this checks the walk and
    # the BN folding of the baseline, which the GPU then runs through cuDNN's fused kernels.
    for name in ("resnet18", "resnet50"):
        model = bench.make_model(name)
        x = bench.make_input(2, torch.float32, "cpu", size=64)
        with torch.no_grad():
            y = bench.CudnnFusedResNet(model, torch.float32)(x)
        bench.check_output(name, y, bench.reference_output(model, x), torch.float32, "cpu")


def test_roofline_math_on_a_tiny_layer():
    layer = bench.ConvLayer("tiny", n=1, c=2, h=4, w=4, k=3, r=3, s=3, stride=1, padding=1,
                            residual=False, relu=True)
    assert (layer.ho, layer.wo) == (4, 4)
    assert layer.flops() == 2 * 1 * 3 * 4 * 4 * 2 * 3 * 3 == 1728
    # input 32 + weight 54 + output 48 elements, 4 bytes each
    assert layer.min_bytes(4) == (32 + 54 + 48) * 4 == 536
    with_res = bench.ConvLayer("tiny", 1, 2, 4, 4, 3, 3, 3, 1, 1, residual=True, relu=True)
    assert with_res.min_bytes(2) == (32 + 54 + 48 + 48) * 2
    strided = bench.ConvLayer("s2", 2, 2, 5, 5, 3, 3, 3, 2, 1, False, True)
    assert (strided.ho, strided.wo) == (3, 3)
    assert strided.flops() == 2 * 2 * 3 * 3 * 3 * 2 * 9

    peaks = bench.DevicePeaks("cpu", "float32", bandwidth=536.0, flops=1728.0 / 2)
    (row,) = bench.roofline_rows([layer], peaks, 4, achieved={"tiny": 4.0})
    assert row["compute_floor_s"] == pytest.approx(2.0)
    assert row["memory_floor_s"] == pytest.approx(1.0)
    assert row["floor_s"] == pytest.approx(2.0) and row["bound"] == "compute"
    assert row["fraction"] == pytest.approx(0.5)
    floor = bench.model_floor([row | {"count": 3}])
    assert floor == pytest.approx({"compute": 6.0, "memory": 3.0, "per_layer": 6.0})


def test_resnet50_conv_layers_match_the_design_numbers():
    layers = bench.conv_layers("resnet50")
    assert layers[0].name == "conv1" and layers[0].label == "7x7 3->64 s2 224x224"
    assert sum(la.count for la in layers) == 53  # stem + 16 blocks x 3 + 4 downsamples
    assert len(layers) == 24
    assert sum(la.count * la.flops() for la in layers) / 1e9 == pytest.approx(8.17, abs=0.01)
    assert sum(la.residual * la.count for la in layers) == 16  # one per bottleneck
    # docs/design.md: bf16 at 800 TFLOP/s and 3.0 TB/s, batch 256 -> per-layer roofline 47.9k img/s.
    rows = bench.roofline_rows([la.with_batch(256) for la in layers],
                               bench.DevicePeaks("h100", "bfloat16", 3.0e12, 800e12), 2)
    floor = bench.model_floor(rows)
    assert 256 / floor["compute"] == pytest.approx(97.9e3, rel=2e-3)
    assert 256 / floor["per_layer"] == pytest.approx(47.9e3, rel=2e-3)


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks/report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(name, median, **extra):
    return {"name": name, "group": None, "stats": {"median": median, "mean": median},
            "extra_info": extra}


def test_report_writes_table_and_plots(tmp_path, capsys):
    data = {
        "machine_info": {"cpu_model": "Test CPU", "torch_threads": 2, "torch": "2.x",
                         "triton": "3.x", "cuda": None, "cudnn": None, "date": "2026-01-01"},
        "datetime": "2026-01-01T00:00:00",
        "resnet_fused": {"command": "python -m pytest benchmarks",
                         "device_peaks": {"torch.float32": {"bandwidth": 4e10, "flops": 4e11}}},
        "benchmarks": [
            _record("a", 0.5, model="resnet50", batch=8, dtype="float32", variant="reference"),
            _record("b", 0.4, model="resnet50", batch=8, dtype="float32", variant="fused-cpu"),
            _record("c", 0.1, model="resnet50", batch=1, dtype="float32", variant="reference"),
            _record("d", 0.125, model="resnet50", batch=1, dtype="float32", variant="fused-cpu",
                    cpu_busy=0.3),
            _record("e", 2e-3, layer="conv1", shape="7x7 3->64 s2 224x224", count=1, batch=8,
                    dtype="float32", variant="conv", floor_s=1e-3),
            _record("f", 2.5e-3, layer="conv1", shape="7x7 3->64 s2 224x224", count=1, batch=8,
                    dtype="float32", variant="fused-cpu", floor_s=1e-3),
        ],
    }
    src = tmp_path / "run.json"
    src.write_text(json.dumps(data))
    report = _load_report()
    assert report.main([str(src), "-o", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "run.md").read_text()
    assert "| model | batch | dtype | reference | fused-cpu |" in md
    assert "**1.25x** (fused-cpu vs reference)" in md  # 8/0.4 vs 8/0.5
    assert "**0.80x**" in md  # batch 1: 10 vs 8 images/s
    assert "| 8.0 † |" in md and "shared with other work" in md  # cpu_busy 0.3: flagged
    # conv alone 2 ms, fused 2.5 ms, floor 1 ms: 40% of the floor, fusion costs 1/0.8
    assert ("| conv1 | 7x7 3->64 s2 224x224 | 8 | float32 | 2,000.0 | 2,500.0 | 1,000.0 | 40.0% "
            "| 0.80 |") in md
    assert "Test CPU" in md and "GEMM 0.400 TFLOP/s" in md
    if importlib.util.find_spec("matplotlib") is not None:
        for suffix in ("throughput", "layers"):
            png = tmp_path / "out" / f"run-{suffix}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("script", "labels"), [("cpu_winograd", ("direct", "winograd")),
                                                 ("cpu_conv1x1", ("onednn", "own"))])
def test_in_model_ab_scripts(script, labels, tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_winograd.py and cpu_conv1x1.py on a tiny input: both settings checked and
    timed per layer, the table printed, every round in the JSON."""
    if script == "cpu_conv1x1":
        from resnet_fused.cpu import conv1x1

        if not conv1x1.available(torch.float32):
            pytest.skip("this CPU cannot run the 1x1 kernel (needs AVX-512)")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(script, REPO / f"benchmarks/{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run.json"
    assert module.main(["--batch", "1", "--dtype", "float32", "--rounds", "2", "--size", "32",
                        "--json", str(out)]) == 0
    assert "## batch 1, float32: model median" in capsys.readouterr().out
    (case,) = json.loads(out.read_text())["cases"]
    assert case["layers"] and set(case["model_s"]) == set(labels)
    for layer in case["layers"]:
        assert all(len(layer[f"{label}_s"]) == 2 for label in labels)


def test_conv1x1_alone(tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_conv1x1.py --alone on a tiny input: every distinct 1x1 shape timed once
    per kernel per round, with each kernel's GFLOP/s."""
    from resnet_fused.cpu import conv1x1

    if not conv1x1.available(torch.float32):
        pytest.skip("this CPU cannot run the 1x1 kernel (needs AVX-512)")
    module = _load_script("cpu_conv1x1", monkeypatch)
    out = tmp_path / "alone.json"
    assert module.main(["--alone", "--batch", "1", "--dtype", "float32", "--rounds", "2",
                        "--size", "32", "--json", str(out)]) == 0
    assert "## batch 1, float32: each distinct 1x1 shape alone" in capsys.readouterr().out
    (case,) = json.loads(out.read_text())["cases"]
    shapes = {(x["c"], x["k"], x["h"], x["stride"], x["residual"], x["relu"])
              for x in case["layers"]}
    assert case["alone"] and len(shapes) == len(case["layers"]) >= 10  # distinct, ResNet-50's
    for layer in case["layers"]:
        assert len(layer["onednn_s"]) == len(layer["own_s"]) == 2
        assert layer["own_gflops"] > 0 and layer["onednn_gflops"] > 0


def _load_script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_overhead_script(tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_check_overhead.py on a tiny input: the three series timed, outputs
    compared."""
    module = _load_script("cpu_check_overhead", monkeypatch)
    out = tmp_path / "overhead.json"
    assert module.main(["--batches", "1", "--dtypes", "float32", "--rounds", "2", "--size", "32",
                        "--json", str(out)]) == 0
    assert "checked / unchecked" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["results"]
    assert set(result["times_s"]) == {"checked", "unchecked", "checked_again"}
    assert all(len(t) == 2 for t in result["times_s"].values()) and result["input_check_s"] > 0


def test_cpu_choice_script(tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_choice.py on a tiny input: both ways of choosing run, are checked against
    fp64 and timed; the measured choices are recorded with their reasons."""
    module = _load_script("cpu_choice", monkeypatch)
    # The script sets both per run: monkeypatch puts the session's values back afterwards.
    monkeypatch.setenv("RESNET_FUSED_CPU_CHOICE", "rule")
    monkeypatch.setenv("RESNET_FUSED_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "choice.json"
    assert module.main(["--batches", "1", "--dtypes", "float32", "--rounds", "2", "--size", "32",
                        "--json", str(out)]) == 0
    assert "ratio = measure / rule time" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["configs"].values()
    assert set(result["median_ms"]) == {"rule", "measure"}
    assert all(err <= 1e-4 for err in result["relative_error"].values())
    whys = [why for shapes in result["choices_measure"].values() for _, why in shapes.values()]
    assert len(whys) == 53 and any(w.startswith("measured on this CPU:") for w in whys)


def test_ab_revisions_script(tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_ab_revisions.py with this checkout on both sides: a child process per side
    and round, each importing the checkout it was given and checking its output."""
    module = _load_script("cpu_ab_revisions", monkeypatch)
    out = tmp_path / "ab.json"
    assert module.main(["--a", str(REPO), "--b", str(REPO), "--batches", "1", "--dtypes",
                        "float32", "--rounds", "2", "--calls", "1", "--threads", "1", "--size",
                        "32", "--json", str(out)]) == 0
    assert "B / A =" in capsys.readouterr().out
    (config,) = json.loads(out.read_text())["configs"]
    assert len(config["rounds"]) == 2
    for row in config["rounds"]:
        for side in ("a", "b"):
            assert row[side]["package"].startswith(str(REPO / "resnet_fused"))
            assert row[side]["rel_error"] <= 1e-4
    with pytest.raises(SystemExit):
        module.main(["--a", str(tmp_path), "--b", str(REPO)])  # not a checkout: refused


# --- the CPU peers (ONNX Runtime, OpenVINO) and the side-by-side table ---------------------------


_PEER_CHILD = r"""
import json, sys
import torch
from resnet_fused import bench
peer = sys.argv[1]
model = bench.make_model("resnet18")
out = {}
for dtype in (torch.float32, torch.bfloat16):
    x = bench.make_input(2, dtype, "cpu", size=64)
    try:
        variant = bench.build_variant(peer, model, x)
    except bench.Unavailable as e:
        out[str(dtype)] = {"unavailable": str(e)}
        continue
    y = variant.fn()
    err = bench.check_output(peer, y, bench.reference_output(model, x), dtype, "cpu")
    out[str(dtype)] = {"dtype": str(y.dtype), "shape": list(y.shape), "err": err,
                       "note": variant.note}
print(json.dumps(out))
"""


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
def test_peer_variants_match_the_reference(peer):
    """The peers run the same model and weights (exported to ONNX) and pass the same check as
    every other variant before they are timed. In a child process: OpenVINO's and ONNX Runtime's
    thread pools do not survive the fork of a DataLoader worker later in this process."""
    from resnet_fused.bench import peers

    why = peers.peer_status(peer)
    if why != "available":
        pytest.skip(f"{peer}: {why}")
    done = subprocess.run([sys.executable, "-c", _PEER_CHILD, peer], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    fp32 = out["torch.float32"]
    assert fp32["dtype"] == "torch.float32" and fp32["shape"] == [2, 1000]
    assert fp32["err"] <= tolerance(torch.float32, "model") and peer in fp32["note"]
    bf16 = out["torch.bfloat16"]
    if peer == "onnxruntime":
        assert "no bfloat16 convolutions" in bf16["unavailable"]
    else:
        assert bf16["err"] <= tolerance(torch.bfloat16, "model")


def test_peer_status_names_the_install(monkeypatch):
    from resnet_fused.bench import peers

    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    assert "pip install" in peers.peer_status("openvino")
    with pytest.raises(peers.PeerUnavailable, match="not installed"):
        peers.build_peer("onnxruntime", bench.make_model("resnet18"),
                         bench.make_input(1, torch.float32, "cpu", size=32))


def test_cpu_table_with_peers(tmp_path, monkeypatch):
    """benchmarks/cpu_table.py: a column per variant present, fuse() against the fastest other."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("cpu_table", REPO / "benchmarks/cpu_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def timed(ms):
        t = [ms / 1e3 * f for f in (1.0, 1.1, 0.9)]
        return {"times_s": t, "median_s": sorted(t)[1], "min_s": min(t), "max_s": max(t),
                "rounds": 3}

    info = {"reference": timed(30), "fused-cpu": timed(10), "compile": timed(15),
            "openvino": timed(12), "onnxruntime": {"skipped": "no bfloat16 convolutions"}}
    run = {"machine_info": {"cpu_model": "Test CPU", "torch_threads": 2, "torch": "x",
                            "date": "d"},
           "benchmarks": [{"extra_info": {"side_by_side": info, "model": "resnet50", "batch": 8,
                                          "dtype": "bfloat16", "threads": 2}}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert module.main([str(path), "-o", str(tmp_path), "--stem", "t"]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "OpenVINO img/s" in md and "ONNX Runtime img/s" not in md
    assert "**1.20x** (1.20–1.20) vs OpenVINO" in md  # the fastest other baseline
    assert "not run: ONNX Runtime: no bfloat16 convolutions" in md


def test_forward_plan_ab(tmp_path, capsys, monkeypatch):
    """benchmarks/cpu_forward_plan.py on a tiny input: the plan's output checked against the
    Python forward's and the reference, both settings timed every round, the env restored."""
    monkeypatch.setenv("RESNET_FUSED_FORWARD_PLAN", "auto")
    module = _load_script("cpu_forward_plan", monkeypatch)
    out = tmp_path / "plan.json"
    assert module.main(["--batch", "1", "--dtype", "float32", "--rounds", "4", "--calls", "1",
                        "--size", "32", "--json", str(out)]) == 0
    assert "batch 1 float32  : plan" in capsys.readouterr().out
    (case,) = json.loads(out.read_text())["cases"]
    assert len(case["times_s"]["auto"]) == len(case["times_s"]["never"]) == 4
    assert case["ratio_median"] > 0 and case["rel_error"] < 1e-3
    assert os.environ["RESNET_FUSED_FORWARD_PLAN"] == "auto"
