"""The job: images in, predictions or features out, resumable, on one process or under torchrun.

Steps, in order (every rank runs them; :meth:`World.agree` makes a failure on any rank stop all):

1. check everything before any work: the inputs (:mod:`.sources`), the output name, the labels,
   the checkpoint against the model, the device and the decoder;
2. rank 0 prepares the output: an already finished job with the same settings and inputs is not
   redone; one with the same settings and other inputs is reopened (:func:`.reopen`: what is still
   listed and unchanged is kept, the rest computed); a partial one (``<out>.parts/``) is resumed
   if its settings match; ``overwrite`` clears;
3. every rank lists what is left (new inputs, and those whose file changed since its result was
   written), cuts it into batches and takes its share (:func:`.shard`);
4. the loop: wait for a decoded batch (DataLoader workers), preprocess on the device, run the fused
   model, append the results to the rank's part files; each phase is timed;
5. rank 0 merges the parts into the final files in input order (:mod:`.outputs`), writes the
   manifest with the time split, and removes the parts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..backends import CHOICES, resolve_backend
from ..pretrained import imagenet_classes, is_pretrained
from ..progress import counter
from .checkpoint import build_fused, build_reference, checkpoint_classes, fingerprint
from .checkpoint import read_checkpoint as _read_checkpoint
from .decode import (
    DEFAULT_MAX_PIXELS,
    BatchDecoder,
    DecodeError,
    decode_jpegs_on_device,
    pillow,
    probe_decoder,
)
from .decode import torchvision_gpu_decoder as _gpu_decoder
from .distributed import RankError, World, init_world, make_batches, shard
from .loader import Batch, ImageFiles, make_loader
from .outputs import (
    OutputFiles,
    columns_for,
    merge,
    output_files,
    read_errors,
    read_inputs,
    read_json,
    read_labels,
    reopen,
    write_json,
)
from .parts import PartWriter, Stat, file_stat, read_parts
from .preprocess import CROP, IMAGENET_MEAN, IMAGENET_STD, RESIZE, EvalTransform
from .sources import list_images

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DECODERS = ("auto", "cpu", "gpu")


class JobError(ValueError):
    """A job that cannot start as asked (raised before any image is processed)."""


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a job: what was finished is kept (``OUT.parts/``), and rerunning
    the same command resumes from there. The message says how far the job (or this rank) got."""


@dataclass
class JobOptions:
    """Everything a job needs; the CLI options map one to one (see ``python -m resnet_fused
    predict --help``)."""

    kind: str  # "predict" or "extract"
    paths: Sequence[str | os.PathLike]
    weights: str | os.PathLike | Mapping[str, Tensor]
    out: str | os.PathLike
    model: str = "resnet50"
    num_classes: int | None = None  # checked against the checkpoint when given
    # predict: a file of class names, one per line; None: the ImageNet names for a 1000-class
    # checkpoint (torchvision's for its weights), none otherwise; False: no names
    labels: str | os.PathLike | bool | None = None
    topk: int = 5
    dtype: str | torch.dtype | None = None  # default: float32 on CPU, bfloat16 on GPU
    batch_size: int | None = None  # default: 8 on CPU (faster per image there), 256 on GPU
    backend: str = "auto"
    device: str | torch.device | None = None  # default: cuda if visible, else cpu
    workers: int | None = None  # DataLoader workers; default: 1 on CPU, min(8, cores) on GPU
    decode: str = "auto"  # "gpu": torchvision.io batched JPEG decoding; "auto": GPU when possible
    # A batched JPEG decoder to use instead of torchvision.io's, on any device: called with a
    # list of 1-D uint8 CPU tensors (the files' bytes) and the device, returns uint8 (3, H, W)
    # images there (see decode.decode_jpegs_on_device for the fallbacks around it).
    batch_decoder: BatchDecoder | None = None
    resize: int = RESIZE
    crop: int = CROP
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True


@dataclass
class Times:
    """Seconds per phase. ``wait``/``gpu_decode``/``preprocess``/``model``/``write`` are wall time
    in the main process; ``decode``/``resize`` are summed over the DataLoader workers that ran
    them in parallel."""

    wait: float = 0.0
    gpu_decode: float = 0.0
    preprocess: float = 0.0
    model: float = 0.0
    write: float = 0.0
    decode: float = 0.0
    resize: float = 0.0

    def add(self, other: Times) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass
class Summary:
    """What a job did; :meth:`report` is the closing summary the CLI prints."""

    kind: str
    out: str
    files: list[str]
    errors_file: str
    status: str  # "done" or "already complete"
    inputs: int
    ok: int
    errors: list[tuple[str, str]]
    resumed: int = 0  # images finished by earlier runs
    # Inputs whose file changed since an earlier run computed them (recomputed now), and, when a
    # finished job was reopened for other inputs, what it held and what is no longer listed.
    changed: list[str] = field(default_factory=list)
    reopened: int = 0  # inputs of the finished job that was reopened (0: none was)
    added: int = 0  # inputs that job did not have
    dropped: list[str] = field(default_factory=list)
    processed: int = 0  # images this run went through (ok or bad), all ranks
    model_images: int = 0  # images through the model this run, all ranks
    wall_s: float = 0.0  # the whole call
    setup_s: float = 0.0  # checks, model build, listing the work (rank 0)
    loop_s: float = 0.0  # the batch loop (the slowest rank)
    merge_s: float = 0.0  # the final merge (rank 0)
    times: Times = field(default_factory=Times)
    world_size: int = 1
    rank: int = 0  # the summary of a rank > 0 covers only that rank's share
    workers: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    decoder: str = "cpu"  # "cpu" (Pillow in the workers), "gpu" (torchvision.io) or "custom"
    batch_size: int = 0

    @property
    def images_per_s(self) -> float:
        """End to end over the batch loop (decode, preprocess, model and write, all ranks), in
        images that went through the model: the rate the model phase is compared with. Files
        that could not be used are counted apart (they cost a read, not a forward pass)."""
        return self.model_images / self.loop_s if self.loop_s > 0 else 0.0

    def report(self, max_errors: int = 10) -> str:
        lines = [f"{self.kind}: {self.inputs} images -> {', '.join(self.files)}"]
        bad = f"{len(self.errors)} could not be used"
        lines.append(f"  {self.ok} ok, {bad}" + (f" (listed with reasons in {self.errors_file})"
                                                    if self.errors else "")
                     + (f"; {self.resumed} were done by an earlier run" if self.resumed else ""))
        if self.reopened:
            lines.append(f"  extended the finished job of {self.reopened} images: {self.added} "
                         "new" + _named(self.changed, "changed since (recomputed)")
                         + _named(self.dropped, "no longer listed (left out of the output)"))
        elif self.changed:
            what = "changed since the earlier run (recomputed)"
            lines.append("  " + _named(self.changed, what)[2:])
        if self.status != "done":
            lines.append(f"  {self.status}: nothing to do (--overwrite to redo it)")
        else:
            t = self.times
            ranks = f"{self.world_size} ranks, " if self.world_size > 1 else ""
            skipped = self.processed - self.model_images
            lines.append(f"  {self.wall_s:.1f} s in all: setup {self.setup_s:.1f} s, "
                         f"{self.model_images} images"
                         + (f" (and {skipped} unusable files)" if skipped else "")
                         + f" in {self.loop_s:.1f} s, merge {self.merge_s:.1f} s")
            lines.append(f"  {self.images_per_s:.1f} images/s end to end ({ranks}{self.device}, "
                         f"{self.dtype}, batch {self.batch_size}, backend {self.backend}, "
                         f"{self.decoder} decode, {self.workers} DataLoader worker"
                         f"{'s' if self.workers != 1 else ''}{' per rank' if ranks else ''})")
            main = {"waiting for decoded images": t.wait, "preprocess": t.preprocess,
                    "model": t.model, "write": t.write}
            if self.decoder != "cpu":
                main = {"waiting for the workers": t.wait, "batched decode": t.gpu_decode,
                        "preprocess": t.preprocess, "model": t.model, "write": t.write}
            if self.world_size > 1:
                main = {k: v / self.world_size for k, v in main.items()}
            total = sum(main.values()) or 1.0
            split = " | ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in main.items())
            lines.append(f"  time split, main process{'es, mean per rank' if ranks else ''}: "
                         f"{split}")
            lines.append(f"  decode workers, CPU time summed: decode {t.decode:.1f} s, "
                         f"resize+crop {t.resize:.1f} s")
            if t.model > 0:
                per_rank = self.model_images / t.model * self.world_size
                lines.append(f"  the model phase alone runs at {per_rank:.1f} images/s, the whole "
                             f"pipeline at {100 * self.images_per_s / per_rank:.0f}% of that; "
                             f"most time goes to: {max(main, key=main.get)}")
        for path, reason in self.errors[:max_errors]:
            lines.append(f"  bad image: {path}: {reason}")
        if len(self.errors) > max_errors:
            lines.append(f"  ... and {len(self.errors) - max_errors} more")
        return "\n".join(lines)


def _named(paths: Sequence[str], what: str, most: int = 3) -> str:
    """', 2 changed since (recomputed): a.jpg, b.jpg' (empty for none)."""
    if not paths:
        return ""
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return f", {len(paths)} {what}: {', '.join(paths[:most])}{more}"


def _parse_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise JobError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _parse_device(device, world: World) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise JobError(f"device: {e}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise JobError("device cuda: no CUDA device is visible")
        if device.index is None:  # one GPU per rank: torchrun's LOCAL_RANK
            device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise JobError(f"device must be cpu or cuda, got {device}")
    return device


def _positive(name: str, value, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobError(f"{name} must be a positive int, got {value!r}")
    return value


def _sha256_text(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


@dataclass
class _Setup:
    """Everything step 1 checked and built."""

    options: JobOptions
    files: OutputFiles
    inputs: list[str]
    stats: dict[str, Stat]  # each input's file_stat when the job listed it
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    workers: int
    decoder: BatchDecoder | None  # batched JPEG decoding in the main process, or None
    decoder_name: str
    transform: EvalTransform
    labels: list[str] | None
    model: torch.nn.Module
    columns: list
    settings: dict
    max_pixels: int

    @property
    def resize_in_workers(self) -> bool:
        # On the CPU the DataLoader workers are where the spare cores are; on a GPU the device
        # resizes a whole batch faster than the workers would. JPEGs decoded in the main
        # process (batched decoder) are resized there too.
        return self.device.type == "cpu" and self.decoder is None


def _setup(options: JobOptions, world: World) -> _Setup:
    kind = options.kind
    try:
        pillow()
    except ImportError as e:
        raise JobError(str(e)) from e
    if kind not in ("predict", "extract"):
        raise JobError(f"kind must be predict or extract, got {kind!r}")
    if options.backend not in CHOICES:
        raise JobError(f"backend must be one of {', '.join(CHOICES)}, got {options.backend!r}")
    if options.decode not in DECODERS:
        raise JobError(f"decode must be one of {', '.join(DECODERS)}, got {options.decode!r}")
    device = _parse_device(options.device, world)
    try:  # a backend that cannot run on this device is refused now, not partway through
        resolve_backend(options.backend, device)
    except (ValueError, RuntimeError) as e:
        raise JobError(f"backend {options.backend}: {e}") from e
    dtype = _parse_dtype(options.dtype, device)
    batch_size = _positive("batch_size", options.batch_size, 256 if device.type == "cuda" else 8)
    cores = os.cpu_count() or 1
    workers = options.workers
    if workers is None:
        workers = min(8, cores) if device.type == "cuda" else 1
    elif not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise JobError(f"workers must be an int >= 0, got {workers!r}")
    max_pixels = _positive("max_pixels", options.max_pixels, DEFAULT_MAX_PIXELS)
    try:
        files = output_files(options.out, kind)
        transform = EvalTransform(options.resize, options.crop)
        labels = None
        if options.labels is not None and not isinstance(options.labels, bool):
            labels = read_labels(options.labels)
        elif options.labels not in (None, False):
            raise ValueError(f"labels must be a file, None or False, got {options.labels!r}")
    except ValueError as e:
        raise JobError(str(e)) from e
    _check_writable(files.out)
    inputs = list_images(options.paths)
    stats = {p: file_stat(p) for p in inputs}

    state, names = _read_checkpoint(options.weights, options.model)
    classes = checkpoint_classes(state)
    if labels is not None and len(labels) != classes:
        raise JobError(f"--labels {os.fspath(options.labels)!r} has {len(labels)} labels but the "
                       f"checkpoint has {classes} classes")
    if kind == "predict" and options.labels is None and classes == len(imagenet_classes()):
        labels = list(names or imagenet_classes())  # ImageNet-1k: its names by default
    topk = 0
    if kind == "predict":
        topk = _positive("topk", options.topk, 5)
        if topk > classes:
            raise JobError(f"topk ({topk}) is more than the checkpoint's {classes} classes")
    weights_sha256 = fingerprint(state if is_pretrained(options.weights) else options.weights)
    reference = build_reference(options.model, state, options.num_classes)
    del state
    width = reference.fc.in_features if kind == "extract" else topk
    model = build_fused(reference, options.backend, dtype, device)
    del reference

    decoder, decoder_name = None, "cpu"
    if options.batch_decoder is not None:
        if not callable(options.batch_decoder):
            raise JobError("batch_decoder must be callable (encoded list, device) -> images")
        decoder, decoder_name = options.batch_decoder, "custom"
    elif options.decode != "cpu" and device.type == "cuda":
        decoder, why = _gpu_decoder()
        if decoder is not None and (problem := probe_decoder(decoder, device)) is not None:
            decoder, why = None, f"torchvision.io cannot decode a test JPEG: {problem}"
        if decoder is not None:
            decoder_name = "gpu"
        elif options.decode == "gpu":
            raise JobError(f"decode gpu: not available ({why})")
    elif options.decode == "gpu":
        raise JobError(f"decode gpu needs a CUDA device; the job runs on {device}")

    settings = {
        "kind": kind, "model": options.model, "num_classes": classes,
        "weights_sha256": weights_sha256, "dtype": str(dtype).replace("torch.", ""),
        "resize": transform.resize, "crop": transform.crop, "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD), "max_pixels": max_pixels, "topk": topk or None,
        "labels_sha256": _sha256_text(labels) if labels else None,
    }
    return _Setup(options, files, inputs, stats, device, dtype, batch_size, workers, decoder,
                  decoder_name, transform, labels, model, columns_for(kind, width), settings,
                  max_pixels)


def _check_writable(out: str) -> None:
    """The output's folder, or the closest existing folder above it, can be written to."""
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise JobError(f"--out {out!r}: cannot write there ({folder!r} is not a writable folder)")


def _differences(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys)


def _prepare_output(setup: _Setup) -> str:
    """Rank 0: "complete" (nothing to do) or "ready" (the parts folder exists, settings match;
    a finished job for other inputs has been reopened into it)."""
    files, options = setup.files, setup.options
    os.makedirs(os.path.dirname(os.path.abspath(files.out)), exist_ok=True)
    if options.overwrite:
        for path in files.finals():
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(files.parts, ignore_errors=True)
    manifest = read_json(files.manifest)
    if manifest is not None and manifest.get("complete"):
        if manifest.get("settings") != setup.settings:
            raise JobError(f"{files.out} was finished by a job with other settings ("
                           f"{_differences(manifest.get('settings', {}), setup.settings)}); "
                           "use --overwrite to redo it, or another --out")
        missing = [p for p in files.finals() if not os.path.exists(p)]
        if missing:
            raise JobError(f"{files.manifest} records a finished job but {missing[0]} is gone; "
                           "use --overwrite to redo it")
        try:
            finished = read_inputs(files)
        except ValueError as e:
            raise JobError(f"{e}; use --overwrite to redo the job") from e
        if finished == [(p, setup.stats[p]) for p in setup.inputs]:
            shutil.rmtree(files.parts, ignore_errors=True)  # left by a kill after the merge
            return "complete"
        _reopen(setup, finished)
    if not os.path.isdir(files.parts):
        existing = [p for p in files.finals() if os.path.exists(p)]
        if existing:
            raise JobError(f"{existing[0]} exists but no finished or partial job of this kind is "
                           "recorded next to it; use --overwrite to replace it, or another --out")
    os.makedirs(files.parts, exist_ok=True)
    recorded = read_json(os.path.join(files.parts, "job.json"))
    if recorded is not None and recorded.get("settings") != setup.settings:
        raise JobError(f"{files.parts} holds a partial job with other settings ("
                       f"{_differences(recorded.get('settings', {}), setup.settings)}); use "
                       "--overwrite to start again, or the settings of that job")
    if recorded is None:
        write_json(os.path.join(files.parts, "job.json"), {"settings": setup.settings})
    return "ready"


def _reopen(setup: _Setup, finished: list[tuple[str, Stat]]) -> None:
    """A finished job with these settings and other inputs becomes a partial one again: its
    results for inputs still listed and unchanged go into a fresh parts folder (built aside, then
    renamed into place), its manifest goes, and the folder's job.json says what changed for the
    summary. Idempotent: a kill anywhere leaves a state the next run redoes or resumes."""
    files = setup.files
    before = dict(finished)
    keep = {p: st for p, st in before.items() if setup.stats.get(p) == st}
    record = {"settings": setup.settings, "reopened": {
        "images": len(finished),
        "added": sum(p not in before for p in setup.inputs),
        "changed": [p for p in setup.inputs if p in before and p not in keep],
        "dropped": [p for p, _ in finished if p not in setup.stats]}}
    building = files.parts + ".reopening"
    shutil.rmtree(building, ignore_errors=True)
    os.makedirs(building)
    try:
        reopen(files, keep, setup.columns, bool(setup.labels), building)
    except (ValueError, KeyError, TypeError, OSError) as e:
        shutil.rmtree(building, ignore_errors=True)
        raise JobError(f"{files.out}: cannot read the finished job's results back to extend it "
                       f"({type(e).__name__}: {e}); use --overwrite to redo it") from e
    write_json(os.path.join(building, "job.json"), record)
    shutil.rmtree(files.parts, ignore_errors=True)
    os.replace(building, files.parts)
    os.remove(files.manifest)


def _to_model_input(batch: Batch, setup: _Setup, times: Times) -> tuple[
        Tensor | None, list[str], list[tuple[str, str]]]:
    """Device batch in the model's dtype, its paths, and images that failed here (GPU decode)."""
    device, transform = setup.device, setup.transform
    errors: list[tuple[str, str]] = []
    if not batch.paths:
        return None, [], errors
    if batch.crops is not None:  # one size for all: resized in the workers, or same-size photos
        images = batch.crops.to(device, non_blocking=True)
        if not setup.resize_in_workers:
            images = transform.resize_crop_stacked(images)
        paths = batch.paths
    else:
        decoded: list = []
        if batch.jpeg is not None:
            start = time.perf_counter()
            decoded = decode_jpegs_on_device(batch.encoded(), device, setup.decoder,
                                             setup.max_pixels)
            _sync(device)
            times.gpu_decode += time.perf_counter() - start
        pixels = batch.images(device)
        items, paths = [], []
        for (where, i), path in zip(batch.order, batch.paths, strict=True):
            item = pixels[i] if where == "image" else decoded[i]
            if isinstance(item, DecodeError):
                errors.append((path, str(item)))
            else:
                items.append(item)
                paths.append(path)
        if not items:
            return None, [], errors
        images = torch.stack(items) if setup.resize_in_workers else \
            transform.resize_crop_batch(items)
    x = transform.normalize(images).to(setup.dtype)
    return x.contiguous(memory_format=torch.channels_last), paths, errors


def _model_outputs(setup: _Setup, x: Tensor) -> dict[str, np.ndarray]:
    if setup.options.kind == "extract":
        return {"features": setup.model.forward_features(x).float().cpu().numpy()}
    probs = setup.model(x).float().softmax(dim=1)
    top_probs, top_classes = probs.topk(setup.columns[0].width, dim=1)
    return {"classes": top_classes.cpu().numpy(), "probs": top_probs.cpu().numpy()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_batches(setup: _Setup, batches: list[list[int]], writer: PartWriter, world: World,
                 times: Times) -> tuple[int, int]:
    """The loop over this rank's batches; returns (images seen, images through the model)."""
    dataset = ImageFiles(setup.inputs, setup.transform if setup.resize_in_workers else None,
                         jpeg_bytes=setup.decoder is not None, max_pixels=setup.max_pixels)
    loader = make_loader(dataset, batches, setup.workers,
                         pin_memory=setup.device.type == "cuda")
    total = sum(len(b) for b in batches)
    desc = setup.options.kind + (f" (rank 0 of {world.size})" if world.size > 1 else "")
    bar = counter(total, desc, unit="img", enabled=setup.options.progress and world.is_main)
    seen = through_model = 0
    try:
        with torch.inference_mode():
            it = iter(loader)
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                if batch is None:
                    break
                times.wait += t1 - t0
                times.decode += batch.decode_s
                times.resize += batch.resize_s
                gpu_decode_before = times.gpu_decode
                x, paths, errors = _to_model_input(batch, setup, times)
                _sync(setup.device)
                t2 = time.perf_counter()
                times.preprocess += t2 - t1 - (times.gpu_decode - gpu_decode_before)
                arrays = _model_outputs(setup, x) if x is not None else {}
                t3 = time.perf_counter()
                times.model += t3 - t2
                writer.write(paths, arrays, batch.errors + errors)
                times.write += time.perf_counter() - t3
                seen += len(batch)
                through_model += len(paths)
                bar.update(len(batch))
    except KeyboardInterrupt:
        raise JobInterrupted(seen, total) from None
    finally:
        bar.close()
    return seen, through_model


def run_job(options: JobOptions) -> Summary:
    """Runs a predict or extract job (see the module docstring); returns its summary (on every
    rank; rank 0's covers all ranks). Raises :class:`JobError` (or :class:`SourceError`,
    :class:`CheckpointError`) before any work for a job that cannot start."""
    start = time.perf_counter()
    world = init_world()
    try:
        return _run(options, world, start)
    finally:
        world.close()


def _run(options: JobOptions, world: World, start: float) -> Summary:
    setup = world.agree(lambda: _setup(options, world))
    state = world.agree(lambda: _prepare_output(setup), on="main")
    files = setup.files
    common = dict(kind=options.kind, out=files.out, files=files.finals(),
                  errors_file=files.errors, world_size=world.size, rank=world.rank,
                  workers=setup.workers,
                  device=str(setup.device), dtype=setup.settings["dtype"],
                  backend=options.backend, decoder=setup.decoder_name,
                  batch_size=setup.batch_size)
    if state == "complete":
        manifest = read_json(files.manifest) or {}
        return Summary(status="already complete", inputs=len(setup.inputs),
                       ok=manifest.get("ok", 0), errors=read_errors(files.out, options.kind),
                       wall_s=time.perf_counter() - start, **common)

    def list_work() -> list[int]:
        if not os.path.isdir(files.parts):
            raise JobError(f"{files.parts} (made by rank 0) is not visible here: --out must be "
                           "on a filesystem every rank shares")
        parts = read_parts(files.parts, setup.columns, setup.stats)
        return [i for i, p in enumerate(setup.inputs) if not parts.done(p)], parts.changed

    todo, changed = world.agree(list_work)
    if len(set(world.gather(_sha256_text([str(i) for i in todo])))) != 1:
        raise RankError("the ranks see different work lists: are the inputs and --out the same "
                        "files on every node?")
    resumed = len(setup.inputs) - len(todo)
    mine = shard(make_batches(todo, setup.batch_size), world)

    setup_s = time.perf_counter() - start
    times = Times()
    try:
        with PartWriter(files.parts, world.rank, setup.columns, setup.stats) as writer:
            seen, through_model = _run_batches(setup, mine, writer, world, times)
    except JobInterrupted as e:
        seen_here, mine_total = e.args
        where = (f"this rank ({world.rank} of {world.size}) after {seen_here} of its "
                 f"{mine_total} images" if world.size > 1 else
                 f"after {resumed + seen_here} of {len(setup.inputs)} images")
        raise JobInterrupted(f"{options.kind}: interrupted {where}; the finished batches are "
                             f"kept in {files.parts}: rerun the same command to resume") from None
    loop_s = time.perf_counter() - start - setup_s
    stats = world.gather({"seen": seen, "model": through_model, "times": asdict(times),
                          "loop": loop_s})
    if not world.is_main:
        return Summary(status="done", inputs=len(setup.inputs), ok=through_model, errors=[],
                       processed=seen, model_images=through_model, times=times,
                       setup_s=setup_s, loop_s=loop_s, **common)

    t_merge = time.perf_counter()
    parts = read_parts(files.parts, setup.columns, setup.stats)
    ok, errors = merge(files, setup.inputs, setup.stats, parts, setup.columns, setup.labels)
    reopened = (read_json(os.path.join(files.parts, "job.json")) or {}).get("reopened") or {}
    changed = set(changed) | set(reopened.get("changed", ()))
    total = Times()
    for s in stats:
        total.add(Times(**s["times"]))
    summary = Summary(status="done", inputs=len(setup.inputs), ok=ok, errors=errors,
                      resumed=resumed, processed=sum(s["seen"] for s in stats),
                      changed=[p for p in setup.inputs if p in changed],
                      reopened=reopened.get("images", 0), added=reopened.get("added", 0),
                      dropped=reopened.get("dropped", []),
                      model_images=sum(s["model"] for s in stats), times=total,
                      setup_s=setup_s, loop_s=max(s["loop"] for s in stats), **common)
    summary.merge_s = time.perf_counter() - t_merge
    summary.wall_s = time.perf_counter() - start
    write_json(files.manifest, {
        "complete": True, "settings": setup.settings, "inputs": len(setup.inputs),
        "ok": ok, "errors": len(errors),
        "last_run": {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "resumed": resumed, "processed": summary.processed,
                     "images_per_s": summary.images_per_s, "wall_s": summary.wall_s,
                     "setup_s": setup_s, "loop_s": summary.loop_s, "merge_s": summary.merge_s,
                     "times_s": asdict(summary.times), "world_size": world.size,
                     "images_per_rank": [s["seen"] for s in stats],
                     "device": str(setup.device), "backend": options.backend,
                     "decoder": setup.decoder_name, "batch_size": setup.batch_size,
                     "workers": setup.workers, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
    })
    shutil.rmtree(files.parts, ignore_errors=True)
    return summary


def predict(paths: Sequence[str | os.PathLike] | str, weights, out, **options) -> Summary:
    """Top-k classes (and labels, probabilities) of every image in ``paths``, written to ``out``
    (``.csv`` or ``.jsonl``). Keyword options: those of :class:`JobOptions`."""
    return run_job(JobOptions("predict", _as_list(paths), weights, out, **options))


def extract(paths: Sequence[str | os.PathLike] | str, weights, out, **options) -> Summary:
    """Pooled features (before ``fc``) of every image in ``paths``, written to ``out`` (``.npy``
    plus ``<out>.index.csv``). Keyword options: those of :class:`JobOptions`."""
    return run_job(JobOptions("extract", _as_list(paths), weights, out, **options))


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
