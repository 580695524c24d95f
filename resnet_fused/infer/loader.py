"""Decoding in ``DataLoader`` workers: a dataset of image paths, batches that pin, a loader.

A worker reads and decodes each image of a batch (timing both), and on the CPU also resizes and
crops it (the workers are where the CPU's spare cores are). With GPU decoding, a worker only reads
the bytes of a plain JPEG (header checked) and leaves the decoding to the GPU; other formats are
decoded by Pillow in the worker. A bad image becomes an error entry in its batch, never an
exception: the job goes on.

Batches are lists of global input indices, so every image lands in the same batch whatever rank
runs it (see :mod:`.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .decode import DEFAULT_MAX_PIXELS, DecodeError, decode_pil, jpeg_for_gpu, read_bytes
from .preprocess import EvalTransform


@dataclass
class Sample:
    path: str
    image: Tensor | None = None  # uint8 (3, H, W), decoded (and resized+cropped on the CPU)
    encoded: Tensor | None = None  # uint8 (bytes,) JPEG for the GPU decoder
    error: str | None = None
    decode_s: float = 0.0
    resize_s: float = 0.0


class ImageFiles(Dataset):
    """``dataset[i]`` reads and decodes ``paths[i]``; never raises for a bad image."""

    def __init__(self, paths: Sequence[str], transform: EvalTransform | None,
                 jpeg_bytes: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths = paths
        self.transform = transform  # resize + crop here when given (the CPU path)
        # True: plain JPEGs go to the main process as bytes, for a batched (GPU) decoder
        self.jpeg_bytes = jpeg_bytes
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        sample = Sample(self.paths[index])
        start = time.perf_counter()
        try:
            data = read_bytes(sample.path)
            if self.jpeg_bytes and jpeg_for_gpu(data, self.max_pixels):
                sample.encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            else:
                sample.image = decode_pil(data, self.max_pixels)
        except DecodeError as e:
            sample.error = str(e)
        except Exception as e:  # a decoder bug or MemoryError must not end the job either
            sample.error = f"cannot decode image: {type(e).__name__}: {e}"
        sample.decode_s = time.perf_counter() - start
        if sample.image is not None and self.transform is not None:
            start = time.perf_counter()
            try:
                sample.image = self.transform.resize_crop(sample.image)
            except Exception as e:
                sample.image, sample.error = None, f"cannot resize: {type(e).__name__}: {e}"
            sample.resize_s = time.perf_counter() - start
        return sample


@dataclass
class Batch:
    """What one batch of the loader holds. ``order`` lists, per usable image in input order,
    ``("image", i)`` into ``images`` or ``("encoded", i)`` into ``encoded``."""

    paths: list[str] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)
    images: list[Tensor] | Tensor = field(default_factory=list)
    encoded: list[Tensor] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    decode_s: float = 0.0
    resize_s: float = 0.0

    def __len__(self) -> int:
        return len(self.paths) + len(self.errors)

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this in its pinning thread: page-locked host memory
        # makes the copies to the GPU asynchronous.
        if isinstance(self.images, Tensor):
            self.images = self.images.pin_memory()
        else:
            self.images = [t.pin_memory() for t in self.images]
        self.encoded = [t.pin_memory() for t in self.encoded]
        return self


def collate(samples: Sequence[Sample]) -> Batch:
    batch = Batch()
    images: list[Tensor] = []
    for s in samples:
        batch.decode_s += s.decode_s
        batch.resize_s += s.resize_s
        if s.error is not None:
            batch.errors.append((s.path, s.error))
        elif s.encoded is not None:
            batch.order.append(("encoded", len(batch.encoded)))
            batch.encoded.append(s.encoded)
            batch.paths.append(s.path)
        else:
            batch.order.append(("image", len(images)))
            images.append(s.image)
            batch.paths.append(s.path)
    # Images resized and cropped in the workers share one size: one tensor, one copy.
    same = images and all(t.shape == images[0].shape for t in images)
    batch.images = torch.stack(images) if same and not batch.encoded else images
    return batch


def make_loader(dataset: ImageFiles, batches: Sequence[Sequence[int]], workers: int,
                pin_memory: bool, prefetch: int = 4) -> DataLoader:
    """Loader over ``batches`` (lists of dataset indices), ``prefetch`` batches ahead per worker."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, prefetch_factor=prefetch if workers > 0 else None)
