"""The job under ``torchrun`` (2 ranks, gloo, on this CPU): the merged output is byte for byte the
single-process output, a rank-split run resumes a crashed single-process one, and an error before
work stops every rank instead of leaving one waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from infer_corpus import bad_corpus, crash_on_write, good_corpus, random_checkpoint

from resnet_fused.infer import extract, predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch has no torch.distributed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    photos = good_corpus(str(root / "photos"))
    bad = bad_corpus(str(root / "photos" / "zz_bad"))  # bad images among the good ones
    ckpt = random_checkpoint(str(root / "r18.pth"), "resnet18", num_classes=10, seed=3)
    labels = root / "labels.txt"
    labels.write_text("".join(f"label {i}\n" for i in range(10)))
    return {"root": root, "photos": str(root / "photos"), "good": photos, "bad": bad,
            "ckpt": ckpt, "labels": str(labels)}


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node=2 -m resnet_fused ARGS``, each rank with the thread count of
    this process (so both sides compute with the same setup)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "resnet_fused", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_two_ranks_give_the_single_process_output(data, tmp_path):
    # 19 images in 7 batches of 3: uneven shares (4 and 3 batches), bad images inside batches.
    single = tmp_path / "single.csv"
    predict([data["photos"]], data["ckpt"], single, model="resnet18", labels=data["labels"],
            topk=3, batch_size=3, workers=1, progress=False, device="cpu")
    ranks = tmp_path / "ranks.csv"
    run = torchrun("predict", data["photos"], "--weights", data["ckpt"], "--model", "resnet18",
                   "--labels", data["labels"], "--topk", "3", "--batch-size", "3",
                   "--workers", "1", "--device", "cpu", "--out", str(ranks))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(2 ranks, cpu" in run.stdout  # one summary, from rank 0, covering both ranks
    assert run.stdout.count("predict: ") == 1
    manifest = json.loads(read(f"{ranks}.job.json"))
    assert manifest["last_run"]["images_per_rank"] == [10, 9]  # batches 0, 2, 4, 6 | 1, 3, 5
    assert read(ranks) == read(single)
    assert read(f"{ranks}.errors.csv") == read(f"{single}.errors.csv")
    assert len(read(f"{single}.errors.csv").splitlines()) == 1 + 5  # header + the bad ones


def test_two_ranks_resume_a_crashed_single_process_job(data, tmp_path, monkeypatch):
    kwargs = dict(model="resnet18", batch_size=2, workers=0, progress=False, device="cpu")
    whole = tmp_path / "whole.npy"
    extract([data["photos"]], data["ckpt"], whole, **kwargs)

    out = tmp_path / "out.npy"
    crash_on_write(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        extract([data["photos"]], data["ckpt"], out, **kwargs)
    monkeypatch.undo()

    run = torchrun("extract", data["photos"], "--weights", data["ckpt"], "--model", "resnet18",
                   "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 were done by an earlier run" in run.stdout  # three batches of two
    for suffix in ("", ".index.csv", ".errors.csv"):
        assert read(f"{out}{suffix}") == read(f"{whole}{suffix}"), suffix


def test_an_error_before_work_stops_every_rank(data, tmp_path):
    run = torchrun("extract", data["photos"], "--weights", str(tmp_path / "missing.pth"),
                   "--device", "cpu", "--out", str(tmp_path / "f.npy"), timeout=180)
    assert run.returncode != 0
    assert "error: weights: no such checkpoint file" in run.stderr
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.npy.parts").exists()
