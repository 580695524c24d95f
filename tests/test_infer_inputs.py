"""The job's inputs and store, piece by piece: listing PATHS, decoding every kind of bad image,
the GPU-decode fallbacks (with a stand-in decoder: no GPU here), and the part files' handling of
a kill mid-write."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest
import torch
from infer_corpus import LISTED, WORKS, bad_corpus, good_corpus, photo
from PIL import Image

from resnet_fused.infer import decode as decode_mod
from resnet_fused.infer.decode import (
    DecodeError,
    decode_jpegs_on_device,
    decode_pil,
    jpeg_for_gpu,
    read_bytes,
    torchvision_gpu_decoder,
)
from resnet_fused.infer.parts import Column, PartWriter, read_parts
from resnet_fused.infer.sources import SourceError, list_images


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_corpus(str(tmp_path_factory.mktemp("bad")))


# -- listing -------------------------------------------------------------------------------------

def test_listing_order_dedup_globs_and_suffixes(tmp_path):
    root = str(tmp_path / "photos")
    paths = good_corpus(root)
    (tmp_path / "photos" / "readme.txt").write_text("not listed by a folder scan")
    explicit = tmp_path / "one.dat"
    explicit.write_bytes(pathlib.Path(paths[0]).read_bytes())
    # A folder lists its images in name order, sub-folders in place; a file named explicitly is
    # taken whatever its suffix; a file met twice is kept at its first place.
    listed = list_images([str(explicit), root, paths[0], os.path.join(root, "sub", "*.png")])
    assert listed == [str(explicit), *paths]
    assert not any(p.endswith("readme.txt") for p in listed)
    assert list_images([os.path.join(root, "**", "*.png")]) == [p for p in paths
                                                                 if p.endswith(".png")]


def test_listing_errors_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="no such file or folder"):
        list_images([str(tmp_path / "missing")])
    with pytest.raises(SourceError, match="pattern matches no file"):
        list_images([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        list_images([str(tmp_path / "empty")])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # the test runs as root, where chmod cannot lock a folder
        if os.path.realpath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SourceError, match=r"cannot read folder .*locked.*Permission denied"):
        list_images([str(tmp_path)])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads any folder whatever its mode")
def test_listing_a_folder_without_read_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(SourceError, match="cannot read folder"):
            list_images([str(locked)])
    finally:
        locked.chmod(0o755)


# -- decoding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", WORKS)
def test_unusual_images_are_converted_to_rgb(bad, case):
    image = decode_pil(read_bytes(bad[case]))
    assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
    pixels = image.permute(1, 2, 0).numpy()
    if case in ("sixteen_bit", "grayscale"):
        # 16-bit values are scaled to 8 bits (v * 255 / 65535), not clipped as Pillow's
        # convert("RGB") would: camera * 257 decodes to exactly camera.
        for c in range(3):
            np.testing.assert_array_equal(pixels[:, :, c], photo("camera"))
    elif case == "rgba":
        np.testing.assert_array_equal(pixels, photo("coffee"))  # alpha dropped
    elif case == "cmyk":
        expected = np.asarray(Image.open(bad[case]).convert("RGB"))
        np.testing.assert_array_equal(pixels, expected)
        assert np.abs(pixels.astype(int) - photo("chelsea")).mean() < 8  # still the photo
    elif case == "big":
        assert tuple(image.shape) == (3, 3000, 4000)


@pytest.mark.parametrize("case, reason", [
    ("truncated", "truncated"),
    ("empty", "empty file"),
    ("not_an_image", "not an image"),
    ("bomb", "too large"),
    ("over_limit", r"too large: 12000x10000 = 120000000 pixels > max_pixels"),
])
def test_bad_images_raise_a_reason(bad, case, reason):
    assert case in LISTED
    with pytest.raises(DecodeError, match=reason):
        decode_pil(read_bytes(bad[case]))


def test_max_pixels_is_enforced_before_decoding(bad):
    with pytest.raises(DecodeError, match="pixels > max_pixels=1000000"):
        decode_pil(read_bytes(bad["big"]), max_pixels=1_000_000)


def test_unreadable_file_is_a_reason_not_a_crash(tmp_path):
    with pytest.raises(DecodeError, match="cannot read file"):
        read_bytes(str(tmp_path / "gone.jpg"))


def test_jpeg_for_gpu_only_takes_plain_jpegs(bad, tmp_path):
    assert jpeg_for_gpu(read_bytes(bad["big"]))
    assert not jpeg_for_gpu(read_bytes(bad["cmyk"]))  # CMYK: Pillow decodes it on the CPU
    assert not jpeg_for_gpu(read_bytes(bad["grayscale"]))  # a PNG
    with pytest.raises(DecodeError):
        jpeg_for_gpu(read_bytes(bad["truncated"])[:40])


# -- GPU decoding logic, with a stand-in decoder (no GPU here; the real one is torchvision.io) ----

def _encoded(path: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(read_bytes(path)), dtype=torch.uint8)


def test_gpu_decode_falls_back_per_image_then_to_pillow(bad):
    good = [_encoded(bad["big"]), _encoded(bad["cmyk"])]
    broken = _encoded(bad["truncated"])
    calls = []

    def decoder(encoded, device):  # fails any batch holding the truncated JPEG, like nvjpeg
        calls.append(len(encoded))
        if any(e is broken for e in encoded):
            raise RuntimeError("nvjpeg: bitstream error")
        if any(e is good[1] for e in encoded):
            raise RuntimeError("nvjpeg: unsupported colour space")
        return [decode_pil(e.numpy().tobytes()) for e in encoded]

    out = decode_jpegs_on_device([good[0], broken, good[1]], torch.device("cpu"), decoder)
    assert calls == [3, 1, 1, 1]  # the batch, then one by one
    assert torch.equal(out[0], decode_pil(read_bytes(bad["big"])))
    assert isinstance(out[1], DecodeError) and "truncated" in str(out[1])
    assert torch.equal(out[2], decode_pil(read_bytes(bad["cmyk"])))  # Pillow's CMYK conversion


def test_gpu_decode_rejects_a_decoder_that_returns_garbage(bad):
    def decoder(encoded, device):
        return [torch.zeros(4, 2, 2, dtype=torch.uint8) for _ in encoded]  # not RGB

    out = decode_jpegs_on_device([_encoded(bad["big"])], torch.device("cpu"), decoder)
    assert torch.equal(out[0], decode_pil(read_bytes(bad["big"])))  # Pillow took over


def test_torchvision_that_fails_to_import_means_no_gpu_decoder(monkeypatch):
    assert torchvision_gpu_decoder()[0] is None or torch.cuda.is_available()
    monkeypatch.setattr(decode_mod.torch.cuda, "is_available", lambda: True)

    class Broken:  # torchvision built for another torch fails like this, not with ImportError
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                raise RuntimeError("operator torchvision::nms does not exist")
            return None

    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    decoder, why = torchvision_gpu_decoder()
    assert decoder is None
    assert "torchvision::nms does not exist" in why


def test_probe_tells_a_working_decoder_from_a_broken_one():
    def pillow_decoder(encoded, device):
        return [decode_pil(e.numpy().tobytes()).to(device) for e in encoded]

    def broken(encoded, device):
        raise RuntimeError("Couldn't load the image extension")

    def wrong(encoded, device):
        return [torch.zeros(3, 16, 16, dtype=torch.uint8) for _ in encoded]

    cpu = torch.device("cpu")
    assert decode_mod.probe_decoder(pillow_decoder, cpu) is None
    assert "Couldn't load the image extension" in decode_mod.probe_decoder(broken, cpu)
    assert "wrongly" in decode_mod.probe_decoder(wrong, cpu)


# -- part files ----------------------------------------------------------------------------------

def test_parts_trust_only_complete_rows_and_a_reopen_cuts_the_tail(tmp_path, generator):
    cols = [Column("classes", "<i8", 3), Column("probs", "<f4", 3)]
    parts_dir = str(tmp_path)
    rows = {"classes": torch.randint(0, 9, (4, 3), generator=generator).numpy(),
            "probs": torch.rand(4, 3, generator=generator).numpy()}
    with PartWriter(parts_dir, 0, cols) as w:
        w.write(["a", "b"], {k: v[:2] for k, v in rows.items()}, [("bad1", "empty file")])
        w.write(["c"], {k: v[2:3] for k, v in rows.items()})
    # A kill mid-batch: the next batch's rows half written, its index line cut short.
    with open(tmp_path / "rank0.classes.bin", "ab") as f:
        f.write(rows["classes"][3].tobytes())
    with open(tmp_path / "rank0.probs.bin", "ab") as f:
        f.write(rows["probs"][3].tobytes()[:5])
    with open(tmp_path / "rank0.index.jsonl", "ab") as f:
        f.write(b'"d')
    with open(tmp_path / "rank0.errors.jsonl", "ab") as f:
        f.write(b'{"path": "bad2", "rea')
    parts = read_parts(parts_dir, cols)
    assert parts.rows == {"a": (0, 0), "b": (0, 1), "c": (0, 2)}
    assert parts.errors == {"bad1": "empty file"}
    assert parts.done("bad1") and not parts.done("d")
    np.testing.assert_array_equal(parts.parts[0].column(cols[1]), rows["probs"][:3])
    # Reopening cuts the partial tail, then appends after the trusted rows.
    with PartWriter(parts_dir, 0, cols) as w:
        w.write(["d"], {k: v[3:4] for k, v in rows.items()}, [("bad2", "truncated")])
    parts = read_parts(parts_dir, cols)
    assert list(parts.rows) == ["a", "b", "c", "d"]
    assert parts.errors == {"bad1": "empty file", "bad2": "truncated"}
    np.testing.assert_array_equal(parts.parts[0].column(cols[0]), rows["classes"])
    np.testing.assert_array_equal(parts.parts[0].column(cols[1]), rows["probs"])
    lines = (tmp_path / "rank0.index.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == ["a", "b", "c", "d"]


def test_parts_count_a_result_only_for_the_file_it_was_computed_from(tmp_path):
    cols = [Column("features", "<f4", 2)]
    then = {"a": (10, 1), "b": (20, 2), "bad": (0, 3)}
    with PartWriter(str(tmp_path), 0, cols, stats=then) as w:
        w.write(["a", "b"], {"features": np.ones((2, 2), np.float32)}, [("bad", "empty file")])
    lines = (tmp_path / "rank0.index.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [["a", 10, 1], ["b", 20, 2]]
    assert read_parts(str(tmp_path), cols, then).changed == set()
    now = {**then, "b": (20, 5), "bad": (7, 3)}  # b touched, bad rewritten
    parts = read_parts(str(tmp_path), cols, now)
    assert parts.rows == {"a": (0, 0)} and parts.errors == {}
    assert parts.changed == {"b", "bad"}
    # Recomputed since (appended by the rerun): valid again, and no longer "changed".
    with PartWriter(str(tmp_path), 0, cols, stats=now) as w:
        w.write(["b"], {"features": np.zeros((1, 2), np.float32)})
    parts = read_parts(str(tmp_path), cols, now)
    assert parts.rows == {"a": (0, 0), "b": (0, 2)} and parts.changed == {"bad"}


def test_parts_of_several_ranks_are_read_together(tmp_path):
    cols = [Column("features", "<f4", 2)]
    for rank, names in ((0, ["a", "c"]), (3, ["b"])):
        with PartWriter(str(tmp_path), rank, cols) as w:
            w.write(names, {"features": np.full((len(names), 2), rank, np.float32)})
    parts = read_parts(str(tmp_path), cols)
    assert parts.rows == {"a": (0, 0), "c": (0, 1), "b": (1, 0)}
    with pytest.raises(ValueError, match=r"column features: expected rows of shape \(1, 2\)"):
        with PartWriter(str(tmp_path), 0, cols) as w:
            w.write(["z"], {"features": np.zeros((1, 3), np.float32)})


# -- batches -------------------------------------------------------------------------------------

def test_a_batch_packs_its_images_into_a_few_tensors(bad, generator):
    from resnet_fused.infer.loader import Sample, collate

    decoded = [decode_pil(read_bytes(bad[c])) for c in ("grayscale", "rgba", "cmyk")]
    jpegs = [_encoded(bad["big"]), _encoded(bad["truncated"])]
    samples = [Sample("a", image=decoded[0]), Sample("j1", encoded=jpegs[0]),
               Sample("bad", error="empty file (0 bytes)", decode_s=0.5),
               Sample("b", image=decoded[1]), Sample("j2", encoded=jpegs[1]),
               Sample("c", image=decoded[2])]
    batch = collate(samples)
    # Each tensor crosses from a worker through its own shared-memory file: a batch holds at
    # most two (decoded pixels or crops, and JPEG bytes), whatever its size.
    assert sum(isinstance(v, torch.Tensor) for v in vars(batch).values()) == 2
    assert batch.paths == ["a", "j1", "b", "j2", "c"] and len(batch) == 6
    assert batch.errors == [("bad", "empty file (0 bytes)")] and batch.decode_s == 0.5
    assert batch.order == [("image", 0), ("encoded", 0), ("image", 1), ("encoded", 1),
                           ("image", 2)]
    for got, want in zip(batch.images(torch.device("cpu")), decoded, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(batch.encoded(), jpegs, strict=True):
        assert torch.equal(got, want)
    crops = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator)
             for _ in range(3)]
    stacked = collate([Sample(str(i), image=t) for i, t in enumerate(crops)])
    assert stacked.pixels is None and torch.equal(stacked.crops, torch.stack(crops))


def test_a_worker_gone_mid_handshake_prints_no_traceback():
    """Ctrl-C or the loader's shutdown can stop a worker while the main process's fd-sharing
    thread talks to it: that thread's "connection reset" (reported through sys.excepthook) is not
    the user's problem; any other error still is."""
    from resnet_fused.infer.loader import _quiet_when_a_worker_is_gone

    def raised_in(filename: str, exc: BaseException) -> tuple:
        code = compile("def serve(e):\n    raise e\n", filename, "exec")
        scope: dict = {}
        exec(code, scope)
        try:
            scope["serve"](exc)
        except BaseException as e:
            return type(e), e, e.__traceback__
        raise AssertionError("not raised")

    sharer = "/usr/lib/python3/multiprocessing/resource_sharer.py"
    reported = []  # what the hook before it (Python's, which prints the traceback) was given

    def previous(*exc_info):
        reported.append(exc_info[1])

    for exc_info in (raised_in(sharer, ConnectionResetError(104, "reset by peer")),
                     raised_in(sharer, ValueError("something else")),
                     raised_in("/app/mine.py", ConnectionResetError(104, "reset"))):
        _quiet_when_a_worker_is_gone(*exc_info, _previous=previous)
    assert [type(e).__name__ for e in reported] == ["ValueError", "ConnectionResetError"]
    assert str(reported[0]) == "something else"
