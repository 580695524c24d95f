"""The predict/extract job end to end on the CPU: real photographs (and damaged copies) in, the
fused model's outputs checked against the reference model on the same preprocessed batch, the
output files, bad images, clear errors before any work, resume after a kill, rerun, overwrite."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from infer_corpus import (
    LISTED,
    WORKS,
    bad_corpus,
    crash_on_write,
    good_corpus,
    random_checkpoint,
)

import resnet_fused
from resnet_fused.__main__ import main
from resnet_fused.infer import (
    CheckpointError,
    EvalTransform,
    JobError,
    SourceError,
    extract,
    predict,
    read_errors,
    read_features,
)
from resnet_fused.infer.decode import decode_pil, read_bytes
from resnet_fused.testing import relative_error, tolerance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bit-for-bit comparisons (resume, decoder paths) run on the CPU whatever the machine has.
FAST = dict(model="resnet18", batch_size=4, workers=1, progress=False, device="cpu")
# The numerics tests also run on a GPU when there is one (fp32 there may use TF32: its bound).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    good = good_corpus(str(root / "photos"))
    bad = bad_corpus(str(root / "bad"))
    ckpt = random_checkpoint(str(root / "r18.pth"), "resnet18", num_classes=10, seed=1)
    labels = root / "labels.txt"
    labels.write_text("".join(f"class number {i}\n" for i in range(10)))
    return {"root": root, "good": good, "bad": bad, "ckpt": ckpt, "labels": str(labels)}


def reference_outputs(arch: str, ckpt: str, paths: list[str], dtype=torch.float64):
    """Features and logits of the reference model on the job's preprocessing of ``paths``."""
    model = getattr(resnet_fused, arch)(num_classes=10, weights=ckpt).eval().to(dtype)
    transform = EvalTransform()
    batch = torch.stack([transform.resize_crop(decode_pil(read_bytes(p))) for p in paths])
    x = transform.normalize(batch).to(dtype)
    with torch.no_grad():
        features = model.forward_features(x)
        return features, model.fc(features)


def assert_rows_close(rows: np.ndarray, ref: torch.Tensor, bound: float) -> None:
    assert rows.shape == tuple(ref.shape)
    for i in range(rows.shape[0]):  # every image within the bound, not just on average
        err = relative_error(torch.from_numpy(np.array(rows[i])), ref[i])
        assert err <= bound, f"row {i}: relative error {err:.3g} > {bound}"


@pytest.mark.parametrize("device", DEVICES)
def test_extract_matches_the_reference_and_lists_bad_images(data, tmp_path, device):
    bad = data["bad"]
    inputs = [*data["good"], *(bad[c] for c in LISTED), *(bad[c] for c in WORKS)]
    out = tmp_path / "features.npy"
    # decode="cpu": the reference below decodes with Pillow, so both see the same pixels.
    summary = extract(inputs, data["ckpt"], out, **{**FAST, "device": device},
                      dtype="float32", decode="cpu")

    features, paths = read_features(out)
    usable = [p for p in inputs if p not in {bad[c] for c in LISTED}]
    assert paths == usable  # input order, bad images left out
    assert features.dtype == np.float32 and features.shape == (len(usable), 512)
    ref_features, _ = reference_outputs("resnet18", data["ckpt"], usable)
    assert_rows_close(features, ref_features, tolerance(torch.float32, "model", device))

    errors = read_errors(out, "extract")
    assert [p for p, _ in errors] == [bad[c] for c in LISTED]  # in input order, with reasons
    reasons = dict(errors)
    assert "truncated" in reasons[bad["truncated"]]
    assert "empty file" in reasons[bad["empty"]]
    assert "not an image" in reasons[bad["not_an_image"]]
    assert "too large" in reasons[bad["bomb"]] and "too large" in reasons[bad["over_limit"]]
    assert summary.ok == len(usable) and len(summary.errors) == len(LISTED)
    assert summary.processed == len(inputs) and summary.status == "done"
    text = summary.report()
    for phrase in ("waiting for decoded images", "preprocess", "model", "write",
                   "decode workers", "images/s", "bad image: " + bad["empty"]):
        assert phrase in text
    manifest = json.loads((tmp_path / "features.npy.job.json").read_text())
    assert manifest["complete"] and manifest["ok"] == len(usable)
    assert manifest["last_run"]["times_s"]["model"] > 0
    assert not (tmp_path / "features.npy.parts").exists()  # the parts are merged and removed


@pytest.mark.parametrize("device", DEVICES)
def test_predict_csv_and_jsonl_match_the_reference(data, tmp_path, device):
    paths = data["good"][:6]
    csv_out, jsonl_out = tmp_path / "preds.csv", tmp_path / "preds.jsonl"
    options = {**FAST, "device": device, "dtype": "float32", "decode": "cpu"}
    predict(paths, data["ckpt"], csv_out, labels=data["labels"], topk=3, **options)
    predict(paths, data["ckpt"], jsonl_out, topk=3, **options)

    with open(csv_out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class_1", "label_1", "prob_1", "class_2", "label_2", "prob_2",
                       "class_3", "label_3", "prob_3"]
    lines = [json.loads(x) for x in jsonl_out.read_text().splitlines()]
    assert [r[0] for r in rows[1:]] == [x["path"] for x in lines] == paths

    _, logits = reference_outputs("resnet18", data["ckpt"], paths)
    ref_probs = logits.softmax(dim=1)
    bound = tolerance(torch.float32, "model", device)
    for row, line, ref in zip(rows[1:], lines, ref_probs, strict=True):
        classes = [int(c) for c in row[1::3]]
        assert row[2::3] == [f"class number {c}" for c in classes]
        probs = torch.tensor([float(p) for p in row[3::3]], dtype=torch.float64)
        assert classes == line["classes"] and "labels" not in line
        assert [float(p) for p in row[3::3]] == line["probs"]
        # The job's probabilities are the reference's for those classes ...
        assert relative_error(probs, ref[classes]) <= bound
        # ... and those classes hold the reference's three largest probabilities (two classes
        # within the bound of each other may come in either order: the photos are random).
        assert len(set(classes)) == 3
        assert relative_error(ref[classes], ref.topk(3).values) <= bound


@pytest.mark.parametrize("device", DEVICES)
def test_resnet50_bfloat16_within_the_bf16_bound(tmp_path, data, device):
    ckpt = random_checkpoint(str(tmp_path / "r50.pth"), "resnet50", num_classes=10, seed=2)
    paths = data["good"][:3]
    extract(paths, ckpt, tmp_path / "f.npy", model="resnet50", dtype="bfloat16", batch_size=3,
            workers=0, progress=False, device=device, decode="cpu")
    features, listed = read_features(tmp_path / "f.npy")
    assert listed == paths and features.shape == (3, 2048)
    ref_features, _ = reference_outputs("resnet50", ckpt, paths, dtype=torch.float32)
    err = relative_error(torch.from_numpy(np.array(features)), ref_features)
    assert err <= tolerance(torch.bfloat16, "model")


# -- clear errors before any work -----------------------------------------------------------------

@pytest.fixture(scope="module")
def other_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"r34": random_checkpoint(str(root / "r34.pth"), "resnet34", num_classes=10),
            "r50_1000": random_checkpoint(str(root / "r50.pth"), "resnet50", num_classes=1000)}


@pytest.mark.parametrize("case, error, message", [
    ("missing folder", SourceError, r"no such file or folder"),
    ("glob matches nothing", SourceError, r"matches no file"),
    ("missing checkpoint", CheckpointError, r"no such checkpoint file"),
    ("corrupt checkpoint", CheckpointError, r"is not a PyTorch checkpoint"),
    ("other depth", CheckpointError, r"the checkpoint is resnet34 with 10 classes, not a "
                                     r"resnet18 \(pass --model resnet34\)"),
    ("other block type", CheckpointError, r"the checkpoint is resnet50 with 1000 classes, not a "
                                          r"resnet18 \(pass --model resnet50\)"),
    ("other class count", CheckpointError, r"the checkpoint has 10 classes .* but 1000 were "
                                           r"asked for \(pass --num-classes 10"),
    ("labels count", JobError, r"has 1000 labels but the checkpoint has 10 classes"),
    ("topk", JobError, r"topk \(11\) is more than the checkpoint's 10 classes"),
    ("out suffix", JobError, r"predict writes \.csv or \.jsonl files"),
    ("resize < crop", JobError, r"resize \(200\) must be >= crop \(224\)"),
])
def test_clear_errors_before_any_work(data, other_checkpoints, tmp_path, case, error, message):
    out_dir = tmp_path / "out"
    kwargs = dict(paths=[data["root"] / "photos"], weights=data["ckpt"],
                  out=out_dir / "p.csv", **FAST)
    if case == "missing folder":
        kwargs["paths"] = [data["root"] / "no-such-folder"]
    elif case == "glob matches nothing":
        kwargs["paths"] = [str(data["root"] / "photos" / "*.webp")]
    elif case == "missing checkpoint":
        kwargs["weights"] = tmp_path / "nope.pth"
    elif case == "corrupt checkpoint":
        (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02 not a checkpoint")
        kwargs["weights"] = tmp_path / "corrupt.pth"
    elif case == "other depth":
        kwargs["weights"] = other_checkpoints["r34"]
    elif case == "other block type":
        kwargs["weights"] = other_checkpoints["r50_1000"]
    elif case == "other class count":
        kwargs["num_classes"] = 1000
    elif case == "labels count":
        (tmp_path / "labels.txt").write_text("x\n" * 1000)
        kwargs["labels"] = tmp_path / "labels.txt"
    elif case == "topk":
        kwargs["topk"] = 11
    elif case == "out suffix":
        kwargs["out"] = out_dir / "p.npy"
    elif case == "resize < crop":
        kwargs["resize"] = 200
    with pytest.raises(error, match=message):
        predict(**kwargs)
    assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing was started


def test_cli_exit_status_and_summary(data, tmp_path, capsys):
    out = tmp_path / "f.npy"
    status = main(["extract", str(data["root"] / "photos"), "--weights", data["ckpt"],
                   "--model", "resnet18", "--out", str(out), "--batch-size", "4",
                   "--workers", "0", "--no-progress", "--device", "cpu"])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"extract: {len(data['good'])} images -> {out}" in printed
    assert "time split, main process" in printed and "the model phase alone" in printed
    assert main(["extract", str(data["root"] / "photos"), "--weights", data["ckpt"],
                 "--out", str(tmp_path / "g.npy")]) == 2  # resnet50 by default: a clear error
    assert "error: weights: the checkpoint is resnet18" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_a_backend_this_machine_lacks_is_refused_before_any_work(backend, data, tmp_path, capsys,
                                                                 monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the backend may run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as a user's shell has it
    out = tmp_path / "p.csv"
    status = main(["predict", str(data["root"] / "photos"), "--weights", data["ckpt"],
                   "--model", "resnet18", "--out", str(out), "--backend", backend,
                   "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: backend {backend}: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "p.csv.parts").exists()


def test_summary_rates_count_the_same_images():
    """140 files, 20 of them unusable: the end-to-end rate and the model phase's are both over
    the 120 images that went through the model, so the pipeline is never above 100% of it."""
    from resnet_fused.infer import Summary
    from resnet_fused.infer.job import Times

    summary = Summary(kind="predict", out="p.csv", files=["p.csv"], errors_file="p.csv.errors.csv",
                      status="done", inputs=140, ok=120, errors=[("x.jpg", "empty file")] * 20,
                      processed=140, model_images=120, wall_s=13.0, setup_s=0.5, loop_s=12.0,
                      times=Times(wait=0.5, preprocess=0.2, model=11.0, write=0.1))
    text = summary.report()
    assert "120 images (and 20 unusable files) in 12.0 s" in text
    assert "10.0 images/s end to end" in text
    pipeline = int(re.search(r"the whole pipeline at (\d+)% of that", text).group(1))
    assert pipeline == 92  # (120 / 12 s) / (120 / 11 s)


# -- rerun, overwrite, resume ---------------------------------------------------------------------

def test_finished_job_is_not_redone_and_overwrite_redoes_it(data, tmp_path):
    paths, out = data["good"][:4], tmp_path / "f.npy"
    extract(paths, data["ckpt"], out, **FAST)
    before = out.stat().st_mtime_ns
    again = extract(paths, data["ckpt"], out, **FAST)
    assert again.status == "already complete" and again.processed == 0 and again.ok == 4
    assert out.stat().st_mtime_ns == before
    with pytest.raises(JobError, match=r"other settings \(dtype: 'float32' then, 'bfloat16'"):
        extract(paths, data["ckpt"], out, dtype="bfloat16", **FAST)
    redo = extract(data["good"][:5], data["ckpt"], out, overwrite=True, **FAST)
    assert redo.status == "done" and redo.processed == 5 and redo.resumed == 0
    assert read_features(out)[1] == data["good"][:5]
    (tmp_path / "stranger.npy").write_bytes(b"someone else's file")
    with pytest.raises(JobError, match="exists but no finished or partial job"):
        extract(paths, data["ckpt"], tmp_path / "stranger.npy", **FAST)


def _rewrite(path, source) -> None:
    """Another picture under ``path`` (a user replacing a file): new bytes, new mtime."""
    before = os.stat(path).st_mtime_ns
    with open(source, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse filesystem clocks aside


@pytest.mark.parametrize("out_name", ["features.npy", "preds.csv", "preds.jsonl"])
def test_a_finished_job_extends_to_other_inputs_computing_only_what_changed(
        data, tmp_path, out_name):
    photos = good_corpus(str(tmp_path / "photos"), count=9)
    first = [*photos[:6], data["bad"]["empty"]]
    kind = "extract" if out_name.endswith(".npy") else "predict"
    run = extract if kind == "extract" else predict
    options = dict(FAST, **({"labels": data["labels"], "topk": 3} if kind == "predict" else {}))
    out = tmp_path / out_name
    run(first, data["ckpt"], out, **options)
    first_text = out.read_text() if kind == "predict" else None
    first_rows = dict(zip(*reversed(read_features(out)), strict=True)) if kind == "extract" \
        else None

    # The user adds three photos, drops one, and replaces another's file with a new picture.
    _rewrite(photos[2], photos[8])
    later = [photos[0], photos[6], photos[1], photos[2], *photos[4:6], data["bad"]["empty"],
             photos[7], photos[8]]
    summary = run(later, data["ckpt"], out, **options)
    assert (summary.reopened, summary.added) == (7, 3)
    assert summary.changed == [photos[2]] and summary.dropped == [photos[3]]
    assert summary.processed == 4 and summary.resumed == len(later) - 4  # only what is new
    report = summary.report()
    assert f"extended the finished job of 7 images: 3 new, 1 changed since (recomputed): " \
           f"{photos[2]}, 1 no longer listed (left out of the output): {photos[3]}" in report

    # The result is a fresh run's over the same inputs: every row within the bound, in order,
    # and the rows kept from the first run bit for bit what it wrote.
    fresh = tmp_path / ("fresh" + out_name[out_name.index("."):])
    run(later, data["ckpt"], fresh, **options)
    assert read_errors(out, kind) == read_errors(fresh, kind) == \
        [(data["bad"]["empty"], read_errors(fresh, kind)[0][1])]
    if kind == "extract":
        rows, paths = read_features(out)
        fresh_rows, fresh_paths = read_features(fresh)
        assert paths == fresh_paths == [p for p in later if p != data["bad"]["empty"]]
        assert_rows_close(rows, torch.from_numpy(np.array(fresh_rows)).double(),
                          tolerance(torch.float32, "model", "cpu"))
        for row, path in zip(rows, paths, strict=True):
            if path in first_rows and path != photos[2]:
                np.testing.assert_array_equal(row, first_rows[path])
    else:
        lines, fresh_lines = out.read_text().splitlines(), fresh.read_text().splitlines()
        assert [x.split(",")[0] for x in lines] == [x.split(",")[0] for x in fresh_lines]
        kept = set(first_text.splitlines())
        for line in lines:
            path = json.loads(line)["path"] if kind == "predict" and out_name.endswith("l") \
                else line.split(",")[0]
            if path in first and path not in (photos[2], photos[3]):
                assert line in kept, f"{path}: the kept result was not copied bit for bit"
    again = run(later, data["ckpt"], out, **options)
    assert again.status == "already complete" and again.processed == 0
    assert not (tmp_path / (out_name + ".parts")).exists()


def test_a_kill_while_a_finished_job_is_reopened_is_resumed(data, tmp_path, monkeypatch):
    photos = good_corpus(str(tmp_path / "photos"), count=6)
    out = tmp_path / "f.npy"
    extract(photos[:4], data["ckpt"], out, **FAST)
    real_remove = os.remove

    def die_before_the_manifest_goes(path):
        if str(path).endswith(".job.json"):
            raise KeyboardInterrupt
        real_remove(path)

    monkeypatch.setattr(os, "remove", die_before_the_manifest_goes)
    with pytest.raises(KeyboardInterrupt):
        extract(photos, data["ckpt"], out, **FAST)
    monkeypatch.setattr(os, "remove", real_remove)
    summary = extract(photos, data["ckpt"], out, **FAST)
    assert (summary.reopened, summary.added, summary.processed) == (4, 2, 2)
    assert read_features(out)[1] == photos


def test_resume_after_a_crash_gives_the_uninterrupted_output(data, tmp_path, monkeypatch):
    paths = [*data["good"], data["bad"]["empty"]]
    extract(paths, data["ckpt"], tmp_path / "whole.npy", **FAST)

    restore = crash_on_write(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        extract(paths, data["ckpt"], tmp_path / "resumed.npy", **FAST)
    restore()
    assert (tmp_path / "resumed.npy.parts").is_dir() and not (tmp_path / "resumed.npy").exists()
    with pytest.raises(JobError, match="partial job with other settings"):
        extract(paths, data["ckpt"], tmp_path / "resumed.npy", dtype="bfloat16", **FAST)

    summary = extract(paths, data["ckpt"], tmp_path / "resumed.npy", **FAST)
    assert summary.resumed == 2 * FAST["batch_size"]  # two whole batches were kept
    assert summary.processed == len(paths) - summary.resumed
    whole, whole_paths = read_features(tmp_path / "whole.npy")
    resumed, resumed_paths = read_features(tmp_path / "resumed.npy")
    assert resumed_paths == whole_paths
    np.testing.assert_array_equal(resumed, whole)  # same batches, same arithmetic: bit for bit
    assert read_errors(tmp_path / "resumed.npy", "extract") == \
        read_errors(tmp_path / "whole.npy", "extract")


def test_a_file_changed_between_a_crash_and_the_rerun_is_recomputed(data, tmp_path,
                                                                    monkeypatch):
    photos = good_corpus(str(tmp_path / "photos"), count=8)
    restore = crash_on_write(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        extract(photos, data["ckpt"], tmp_path / "f.npy", **FAST)
    restore()
    _rewrite(photos[1], photos[7])  # finished in the first batch, then replaced
    summary = extract(photos, data["ckpt"], tmp_path / "f.npy", **FAST)
    assert summary.changed == [photos[1]] and summary.resumed == FAST["batch_size"] - 1
    assert "1 changed since the earlier run (recomputed): " + photos[1] in summary.report()
    extract(photos, data["ckpt"], tmp_path / "fresh.npy", **FAST)
    rows, fresh = read_features(tmp_path / "f.npy")[0], read_features(tmp_path / "fresh.npy")[0]
    assert_rows_close(rows, torch.from_numpy(np.array(fresh)).double(),
                      tolerance(torch.float32, "model", "cpu"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_fused", *args]


class StoppedJob:
    """A 14-image predict job started as a command, stopped by ``sig`` once two batches are
    written; ``rerun()`` runs the same command again, ``whole`` is the uninterrupted output."""

    def __init__(self, data, tmp_path, sig: int) -> None:
        self.photos = good_corpus(str(tmp_path / "photos"), count=14)
        self.args = ["predict", str(tmp_path / "photos"), "--weights", data["ckpt"], "--model",
                     "resnet18", "--batch-size", "2", "--workers", "1", "--no-progress",
                     "--device", "cpu"]
        self.env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        self.whole = tmp_path / "whole.csv"
        predict([str(tmp_path / "photos")], data["ckpt"], self.whole, model="resnet18",
                batch_size=2, workers=1, progress=False, device="cpu")
        self.out = tmp_path / "stopped.csv"
        self.proc = subprocess.Popen(_cli(*self.args, "--out", str(self.out)), env=self.env,
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.index = tmp_path / "stopped.csv.parts" / "rank0.index.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.index.exists() and self.index.read_bytes().count(b"\n") >= 4:  # 2 batches
                break
            time.sleep(0.01)
        self.proc.send_signal(sig)
        self.stdout, self.stderr = self.proc.communicate(timeout=120)

    def rerun(self) -> subprocess.CompletedProcess:
        return subprocess.run(_cli(*self.args, "--out", str(self.out)), env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)


def test_killed_job_rerun_gives_the_uninterrupted_output(data, tmp_path):
    job = StoppedJob(data, tmp_path, signal.SIGKILL)
    assert job.proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    kept = job.index.read_bytes().count(b"\n")
    assert 4 <= kept < len(job.photos) and not job.out.exists()
    rerun = job.rerun()
    assert rerun.returncode == 0, rerun.stderr
    assert "were done by an earlier run" in rerun.stdout
    assert job.out.read_text() == job.whole.read_text()


def test_batched_decoder_path_gives_the_cpu_paths_output(data, tmp_path):
    """The GPU pipeline's path (JPEG bytes to the main process, one batched decode, resize of the
    whole batch there), run on the CPU with a stand-in decoder (no GPU here): same features and
    the same bad-image reasons as Pillow in the workers."""
    bad = data["bad"]
    inputs = [*data["good"], bad["truncated"], bad["cmyk"], bad["big"], bad["empty"]]
    calls = []

    def decoder(encoded, device):  # a batch holding a broken JPEG fails as a whole, like nvjpeg
        calls.append(len(encoded))
        return [decode_pil(e.numpy().tobytes()).to(device) for e in encoded]

    extract(inputs, data["ckpt"], tmp_path / "cpu.npy", **FAST)
    summary = extract(inputs, data["ckpt"], tmp_path / "batched.npy", batch_decoder=decoder,
                      **FAST)
    assert summary.decoder == "custom" and "batched decode" in summary.report()
    assert sum(calls) >= 4  # the JPEGs came to the main process (CMYK and PNGs did not)
    cpu, cpu_paths = read_features(tmp_path / "cpu.npy")
    batched, batched_paths = read_features(tmp_path / "batched.npy")
    assert batched_paths == cpu_paths
    np.testing.assert_array_equal(batched, cpu)
    assert read_errors(tmp_path / "batched.npy", "extract") == \
        read_errors(tmp_path / "cpu.npy", "extract")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_jpeg_decoding_end_to_end(data, tmp_path):
    """torchvision.io's batched GPU decoder in the job (skips where torchvision does not
    import). Another JPEG decoder gives slightly different pixels than Pillow's libjpeg, so the
    features are compared loosely with the Pillow-decoded run; the bad-image list must match."""
    from resnet_fused.infer.decode import torchvision_gpu_decoder

    decoder, why = torchvision_gpu_decoder()
    if decoder is None:
        pytest.skip(f"no GPU JPEG decoder: {why}")
    bad = data["bad"]
    inputs = [*data["good"], bad["truncated"], bad["cmyk"], bad["big"], bad["empty"]]
    options = dict(model="resnet18", batch_size=4, workers=2, progress=False, device="cuda",
                   dtype="float32")
    extract(inputs, data["ckpt"], tmp_path / "pillow.npy", decode="cpu", **options)
    summary = extract(inputs, data["ckpt"], tmp_path / "gpu.npy", decode="gpu", **options)
    assert summary.decoder == "gpu" and summary.times.gpu_decode > 0
    pillow, pillow_paths = read_features(tmp_path / "pillow.npy")
    gpu, gpu_paths = read_features(tmp_path / "gpu.npy")
    assert gpu_paths == pillow_paths
    assert [p for p, _ in read_errors(tmp_path / "gpu.npy", "extract")] == \
        [p for p, _ in read_errors(tmp_path / "pillow.npy", "extract")]
    err = relative_error(torch.from_numpy(np.array(gpu)), torch.from_numpy(np.array(pillow)))
    assert err < 2e-2, f"GPU-decoded features differ from Pillow-decoded ones by {err:.3g}"


def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(data, tmp_path):
    """SIGINT mid-job: exit 130, one line saying how far it got and that rerunning resumes, no
    traceback; the rerun finishes with the same output as an uninterrupted job."""
    job = StoppedJob(data, tmp_path, signal.SIGINT)
    if job.proc.returncode == 0:
        pytest.skip("the job finished before the signal arrived")
    assert job.proc.returncode == 130, job.stderr
    assert "Traceback" not in job.stderr, job.stderr
    lines = [line for line in job.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, job.stderr
    assert re.fullmatch(r"predict: interrupted after \d+ of 14 images; the finished batches are "
                        r"kept in .*stopped\.csv\.parts: rerun the same command to resume",
                        lines[0]), lines[0]
    rerun = job.rerun()
    assert rerun.returncode == 0, rerun.stderr
    assert job.out.read_text() == job.whole.read_text()
