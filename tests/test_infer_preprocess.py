"""Preprocessing = torchvision's ImageNet eval transform (Resize(256), CenterCrop(224), /255,
Normalize), checked on real photographs against implementations that share no code with it:

- the antialiased bilinear filter written out in float64 numpy from its definition (the float
  path, which is what runs on a GPU);
- Pillow's resize, i.e. torchvision's PIL path (the CPU path: torch's uint8 kernel);
- torchvision itself, where it imports (not on the CPU CI machine: there the test skips).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from infer_corpus import COLOUR, photo
from PIL import Image

from resnet_fused.infer.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    center_crop_box,
    resize_uint8,
    resized_size,
)

PHOTOS = (*COLOUR, "camera", "page", "hubble_deep_field", "retina", "rocket")
ONE_STEP = 1 / 255 / min(IMAGENET_STD)  # one uint8 step after normalisation


def rgb(name: str) -> np.ndarray:
    a = photo(name)
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)


def filter_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of the antialiased triangle (bilinear) filter, from its definition: the
    filter is stretched by the scale when shrinking, centred on each output pixel's centre mapped
    into the input, and normalised to sum 1."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - stretch + 0.5), 0)
        hi = min(int(centre + stretch + 0.5), in_size)
        for j in range(lo, hi):
            weights[i, j] = max(0.0, 1.0 - abs((j + 0.5 - centre) / stretch))
        weights[i] /= weights[i].sum()
    return weights


def reference_resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float64 separable resize of an (H, W, 3) uint8 image, one rounding at the end."""
    rows = filter_matrix(a.shape[0], size[0])
    cols = filter_matrix(a.shape[1], size[1])
    h, w, c = a.shape
    out = (rows @ a.astype(np.float64).reshape(h, w * c)).reshape(size[0], w, c)  # vertical
    out = (out.transpose(0, 2, 1) @ cols.T).transpose(0, 2, 1)  # horizontal
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def reference_pipeline(a: np.ndarray) -> np.ndarray:
    """torchvision's PIL path: PIL resize (short side 256), PIL crop 224, /255, normalise."""
    image = Image.fromarray(a)
    w, h = image.size
    if w <= h:
        size = (256, math.floor(256 * h / w))
    else:
        size = (math.floor(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (x - mean) / std


@pytest.mark.parametrize("name", PHOTOS)
def test_float_path_matches_the_filter_definition(name):
    a = rgb(name)
    size = resized_size(a.shape[0], a.shape[1], 256)
    ours = resize_uint8(as_tensor(a)[None], size, native=False)[0].permute(1, 2, 0).numpy()
    ref = reference_resize(a, size)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1  # float32 vs float64 can only differ at a .5 rounding tie
    assert (diff > 0).mean() < 2e-4  # measured: at most 7e-5 on these photos


@pytest.mark.parametrize("name", PHOTOS)
def test_cpu_path_matches_pillow(name):
    a = rgb(name)
    size = resized_size(a.shape[0], a.shape[1], 256)
    ours = resize_uint8(as_tensor(a)[None], size)[0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(a).resize(size[::-1], Image.BILINEAR))
    diff = np.abs(ours.astype(int) - pil.astype(int))
    # Both round to uint8 between the two passes in fixed point; they differ by one on a few
    # pixels in a thousand (measured: at most 0.33% on these photos).
    assert diff.max() <= 1
    assert (diff > 0).mean() < 5e-3


@pytest.mark.parametrize("name", PHOTOS)
def test_eval_transform_matches_torchvisions_pil_pipeline(name):
    a = rgb(name)
    transform = EvalTransform()
    ours = transform.normalize(transform.resize_crop(as_tensor(a))[None])[0].numpy()
    ref = reference_pipeline(a)
    assert ours.shape == ref.shape == (3, 224, 224)
    diff = np.abs(ours - ref)
    assert diff.max() <= ONE_STEP * 1.0001
    same = diff < ONE_STEP / 2
    assert same.mean() > 0.995  # measured: at least 99.6% on these photos
    np.testing.assert_array_equal(ours[same], ref[same])  # same pixel -> bit-identical input


def test_sizes_and_crop_follow_torchvision():
    # short side -> 256, long side int(256 * long / short), truncated
    assert resized_size(300, 451, 256) == (256, 384)  # 384.85 -> 384
    assert resized_size(427, 640, 256) == (256, 383)  # 383.7 -> 383
    assert resized_size(640, 427, 256) == (383, 256)
    assert resized_size(512, 512, 256) == (256, 256)
    assert resized_size(191, 384, 256) == (256, 514)  # upscaling: 514.68 -> 514
    # crop margin: Python's round (half to even) of (size - 224) / 2
    assert center_crop_box(256, 384, 224) == (16, 80)
    assert center_crop_box(256, 383, 224) == (16, 80)  # 79.5 -> 80
    assert center_crop_box(256, 385, 224) == (16, 80)  # 80.5 -> 80
    assert center_crop_box(257, 256, 224) == (16, 16)  # 16.5 -> 16


def test_batch_resize_groups_by_size_and_keeps_order(generator):
    transform = EvalTransform()
    sizes = [(300, 451), (512, 512), (300, 451), (191, 384), (512, 512), (300, 451)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
              for h, w in sizes]
    batch = transform.resize_crop_batch(images)
    assert batch.shape == (len(images), 3, 224, 224)
    for i, image in enumerate(images):
        assert torch.equal(batch[i], transform.resize_crop(image))


def test_normalize_is_x_over_255_minus_mean_over_std(generator):
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=generator)
    out = EvalTransform().normalize(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(out, (x.float() / 255 - mean) / std)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"resize \(200\) must be >= crop \(224\)"):
        EvalTransform(resize=200)
    with pytest.raises(ValueError, match="crop must be a positive int"):
        EvalTransform(crop=0)
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform().normalize(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"uint8 RGB image of sizes \(3, H, W\)"):
        EvalTransform().resize_crop(torch.zeros(4, 10, 10, dtype=torch.uint8))


def _torchvision():
    try:
        from torchvision import transforms
        from torchvision.transforms import v2
    except Exception as e:  # any failure: torchvision built for another torch raises RuntimeError
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: {e})")
    return transforms, v2


def test_matches_torchvision_itself():
    transforms, v2 = _torchvision()
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    pil_path = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    tensor_path = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    transform = EvalTransform()
    for name in PHOTOS:
        a = rgb(name)
        ours = transform.normalize(transform.resize_crop(as_tensor(a))[None])[0]
        for ref in (pil_path(Image.fromarray(a)), tensor_path(as_tensor(a).contiguous())):
            diff = (ours - ref).abs()
            assert diff.max().item() <= ONE_STEP * 1.0001, name
            assert (diff > ONE_STEP / 2).float().mean().item() < 1e-2, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resize_is_the_float_path():
    transform = EvalTransform()
    for name in PHOTOS:
        image = as_tensor(rgb(name))
        size = resized_size(image.shape[1], image.shape[2], 256)
        cpu = resize_uint8(image[None], size, native=False)
        cuda = resize_uint8(image[None].cuda(), size).cpu()
        diff = (cpu.int() - cuda.int()).abs()
        assert diff.max().item() <= 1 and (diff > 0).float().mean().item() < 2e-4, name
        batch = transform.resize_crop_batch([image.cuda(), image.cuda()])
        assert batch.device.type == "cuda" and batch.shape == (2, 3, 224, 224)
