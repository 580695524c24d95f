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

import sys
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
    """One batch from the loader, packed into a few tensors: a worker hands each tensor to the
    main process through its own shared-memory file, so a batch of 256 separate images would
    hold 256 file descriptors (and prefetching dozens of batches can exhaust the process's limit).

    ``order`` lists, per usable image in input order, ``("image", i)`` (the i-th decoded image)
    or ``("encoded", i)`` (the i-th JPEG for the batched decoder). Decoded images are either
    ``crops`` (all resized and cropped in the workers: one (N, 3, c, c) tensor) or packed in
    ``pixels`` (each (H, W, 3), flattened one after the other; sizes in ``shapes``). JPEG bytes
    are packed in ``jpeg`` (lengths in ``jpeg_sizes``)."""

    paths: list[str] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)
    crops: Tensor | None = None
    pixels: Tensor | None = None
    shapes: list[tuple[int, int]] = field(default_factory=list)
    jpeg: Tensor | None = None
    jpeg_sizes: list[int] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    decode_s: float = 0.0
    resize_s: float = 0.0

    def __len__(self) -> int:
        return len(self.paths) + len(self.errors)

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this in its pinning thread: page-locked host memory
        # makes the copies to the GPU asynchronous.
        for name in ("crops", "pixels", "jpeg"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).pin_memory())
        return self

    def images(self, device: torch.device) -> list[Tensor]:
        """The packed decoded images on ``device`` (one copy), each uint8 (3, H, W)."""
        if self.pixels is None:
            return []
        flat = self.pixels.to(device, non_blocking=True)
        pieces = flat.split([h * w * 3 for h, w in self.shapes])
        return [p.view(h, w, 3).permute(2, 0, 1) for p, (h, w) in zip(pieces, self.shapes,
                                                                         strict=True)]

    def encoded(self) -> list[Tensor]:
        """The packed JPEG files, each a 1-D uint8 CPU tensor (views, no copy)."""
        return [] if self.jpeg is None else list(self.jpeg.split(self.jpeg_sizes))


def collate(samples: Sequence[Sample]) -> Batch:
    batch = Batch()
    images: list[Tensor] = []
    jpegs: list[Tensor] = []
    for s in samples:
        batch.decode_s += s.decode_s
        batch.resize_s += s.resize_s
        if s.error is not None:
            batch.errors.append((s.path, s.error))
        elif s.encoded is not None:
            batch.order.append(("encoded", len(jpegs)))
            jpegs.append(s.encoded)
            batch.paths.append(s.path)
        else:
            batch.order.append(("image", len(images)))
            images.append(s.image)
            batch.paths.append(s.path)
    if jpegs:
        batch.jpeg = torch.cat(jpegs)
        batch.jpeg_sizes = [t.numel() for t in jpegs]
    if images and not jpegs and all(t.shape == images[0].shape for t in images):
        batch.crops = torch.stack(images)
    elif images:
        batch.pixels = torch.cat([t.permute(1, 2, 0).reshape(-1) for t in images])
        batch.shapes = [tuple(t.shape[1:]) for t in images]
    return batch


_SHARER = "multiprocessing/resource_sharer.py"
_PEER_GONE = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)


def _quiet_when_a_worker_is_gone(exc_type, exc, tb, _previous=sys.excepthook) -> None:
    """``sys.excepthook`` without one harmless traceback: the main process's thread that hands
    tensors' file descriptors to the DataLoader workers (multiprocessing's resource sharer, which
    reports its errors through ``sys.excepthook``) prints "connection reset by peer" when a worker
    is stopped mid-handshake (Ctrl-C, the loader's shutdown). The job sees a dead worker through
    the DataLoader itself; anything else is reported as before."""
    frames, where = [], tb
    while where is not None:
        frames.append(where.tb_frame.f_code.co_filename.replace("\\", "/"))
        where = where.tb_next
    if issubclass(exc_type, _PEER_GONE) and any(f.endswith(_SHARER) for f in frames):
        return
    _previous(exc_type, exc, tb)


def make_loader(dataset: ImageFiles, batches: Sequence[Sequence[int]], workers: int,
                pin_memory: bool, prefetch: int = 4) -> DataLoader:
    """Loader over ``batches`` (lists of dataset indices), ``prefetch`` batches ahead per worker."""
    if workers > 0 and sys.excepthook is not _quiet_when_a_worker_is_gone:
        # Not restored: the sharing thread's errors can come as late as interpreter exit.
        sys.excepthook = _quiet_when_a_worker_is_gone
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, prefetch_factor=prefetch if workers > 0 else None)
