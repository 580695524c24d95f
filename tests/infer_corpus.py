"""Test corpus for the predict/extract job: real photographs from scikit-image's sample data
(shipped with the package, no network), and damaged copies of them.

Not a test module: the infer test modules import these helpers.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import resnet_fused
from resnet_fused.testing import randomize_batchnorm_

skimage_data = pytest.importorskip(
    "skimage.data", reason="the infer tests use scikit-image's sample photographs "
                           "(pip install scikit-image, in the test extra)")

# Colour photographs (scikit-image names) and the grayscale one.
COLOUR = ("astronaut", "chelsea", "coffee", "immunohistochemistry", "motorcycle_left")
# JPEGs exactly as scikit-image ships them (real camera/scanner files, not re-encoded here).
SHIPPED_JPEGS = ("rocket.jpg", "hubble_deep_field.jpg", "retina.jpg")


def photo(name: str) -> np.ndarray:
    if name == "motorcycle_left":  # one of a stereo pair, shipped as a PNG file
        return np.asarray(Image.open(shipped("motorcycle_left.png")).convert("RGB"))
    return np.asarray(getattr(skimage_data, name)())


def shipped(name: str) -> str:
    return os.path.join(skimage_data.data_dir, name)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` 8-bit gray with a tiny (wrong) body:
    the shape of a decompression bomb, without allocating one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def good_corpus(root: str, count: int | None = None) -> list[str]:
    """Photographs as JPEG and PNG files in ``root`` (a sub-folder too), in name order.

    ``count`` > the number of photos repeats them under new names (JPEG quality varies, so the
    bytes differ) for jobs that need more batches."""
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    paths = []
    for name in SHIPPED_JPEGS:
        paths.append(os.path.join(root, name))
        shutil.copyfile(shipped(name), paths[-1])
    for name in COLOUR:
        paths.append(os.path.join(root, "sub", name + ".png"))
        Image.fromarray(photo(name)).save(paths[-1])
    paths.append(os.path.join(root, "camera_gray.jpg"))
    Image.fromarray(photo("camera")).save(paths[-1], quality=92)
    if count is not None:
        names = (*COLOUR, "camera")
        i = 0
        while len(paths) < count:
            name = names[i % len(names)]
            paths.append(os.path.join(root, f"copy{i:03d}_{name}.jpg"))
            Image.fromarray(photo(name)).save(paths[-1], quality=70 + i % 25)
            i += 1
        paths = paths[:count]
    return sorted(paths, key=_scan_order(root))


def _scan_order(root: str):
    # The order a folder scan produces: names compared per path component.
    return lambda p: os.path.relpath(p, root).split(os.sep)


def bad_corpus(root: str) -> dict[str, str]:
    """Damaged or unusual copies of the photographs: case -> path. Cases that must work are
    ``cmyk``, ``sixteen_bit``, ``grayscale``, ``big``, ``rgba``; the rest must be listed."""
    os.makedirs(root, exist_ok=True)
    with open(shipped("rocket.jpg"), "rb") as f:
        rocket = f.read()
    cases = {
        "truncated": ("truncated.jpg", rocket[: len(rocket) // 2]),
        "empty": ("empty.jpg", b""),
        "not_an_image": ("notes.jpg", b"these are meeting notes, not a JPEG\n" * 20),
        "cmyk": ("cmyk.jpg", encode(Image.fromarray(photo("chelsea")).convert("CMYK"), "JPEG",
                                    quality=92)),
        "sixteen_bit": ("camera16.png",
                        encode(Image.fromarray(photo("camera").astype(np.uint16) * 257), "PNG")),
        "grayscale": ("camera.png", encode(Image.fromarray(photo("camera")), "PNG")),
        "rgba": ("coffee_rgba.png", encode(Image.fromarray(photo("coffee")).convert("RGBA"),
                                           "PNG")),
        "bomb": ("bomb.png", png_header_only(100_000, 100_000)),
        "over_limit": ("over_limit.png", png_header_only(12_000, 10_000)),
        # 4000 x 3000: 12 Mpixels, a big camera photo, under the limit: it must work.
        "big": ("big.jpg", encode(Image.fromarray(photo("astronaut")).resize((4000, 3000)),
                                  "JPEG", quality=85)),
    }
    out = {}
    for case, (name, data) in cases.items():
        out[case] = os.path.join(root, name)
        with open(out[case], "wb") as f:
            f.write(data)
    return out


WORKS = ("cmyk", "sixteen_bit", "grayscale", "rgba", "big")
LISTED = ("truncated", "empty", "not_an_image", "bomb", "over_limit")


def random_checkpoint(path: str, arch: str = "resnet18", num_classes: int = 10,
                      seed: int = 0) -> str:
    """A checkpoint of random weights with non-trivial BatchNorm statistics and fc bias."""
    generator = torch.Generator().manual_seed(seed)
    model = getattr(resnet_fused, arch)(num_classes=num_classes)
    randomize_batchnorm_(model, generator)
    with torch.no_grad():
        model.fc.bias.copy_(torch.randn(num_classes, generator=generator))
    torch.save(model.state_dict(), path)
    return path


def crash_on_write(monkeypatch, n: int):
    """Makes the job's n-th batch write raise KeyboardInterrupt, as a Ctrl-C or a dying process
    would stop the loop there (the n-1 batches before it are kept). Returns a function that puts
    the real write back."""
    from resnet_fused.infer.parts import PartWriter

    real_write, calls = PartWriter.write, []

    def write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(PartWriter, "write", write)
    return lambda: monkeypatch.setattr(PartWriter, "write", real_write)
