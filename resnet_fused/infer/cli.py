"""The options shared by ``python -m resnet_fused predict`` and ``extract``, and running them."""

from __future__ import annotations

import argparse
import sys

from ..backends import CHOICES
from .checkpoint import ARCHES, CheckpointError
from .decode import DEFAULT_MAX_PIXELS
from .distributed import RankError
from .job import DECODERS, JobError, JobInterrupted, JobOptions, run_job
from .preprocess import CROP, RESIZE
from .sources import SourceError


def add_common_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATHS",
                        help="image files, folders (scanned recursively) or glob patterns "
                             "(quote them), in the order the output keeps")
    parser.add_argument("--weights", required=True, metavar="CKPT",
                        help="checkpoint: .pth/.pt/.safetensors state dict with torchvision's "
                             "keys, or torchvision:NAME for torchvision's published ImageNet "
                             "weights of --model (e.g. torchvision:IMAGENET1K_V2; downloaded "
                             "once into torch's hub cache)")
    parser.add_argument("--out", required=True, metavar="FILE", help=out_help)
    parser.add_argument("--model", choices=tuple(ARCHES), default="resnet50",
                        help="network depth the checkpoint is for (default resnet50)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="expected classes (default: whatever the checkpoint has)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 8 on CPU, 256 on GPU)")
    parser.add_argument("--backend", choices=CHOICES, default="auto",
                        help="fused kernels to use (default auto: cuda, then triton on GPU; cpu "
                             "on CPU)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda if visible; under torchrun each rank "
                             "uses GPU LOCAL_RANK)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader decode workers per rank (default: 1 on CPU, "
                             "min(8, cores) on GPU); 0 decodes in the main process")
    parser.add_argument("--decode", choices=DECODERS, default="auto",
                        help="where JPEGs are decoded: gpu (torchvision.io, batched), cpu "
                             "(Pillow in the workers), auto (gpu when available)")
    parser.add_argument("--resize", type=int, default=RESIZE,
                        help=f"short side before the center crop (default {RESIZE})")
    parser.add_argument("--crop", type=int, default=CROP,
                        help=f"center crop size (default {CROP})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="larger images are listed as errors instead of decoded (default "
                             f"{DEFAULT_MAX_PIXELS}, Pillow's decompression-bomb threshold)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo the job from scratch (default: resume a partial job, skip a "
                             "finished one, and extend a finished one to new or changed inputs, "
                             "computing only those)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from(args: argparse.Namespace, kind: str, **extra) -> JobOptions:
    return JobOptions(kind=kind, paths=args.paths, weights=args.weights, out=args.out,
                      model=args.model, num_classes=args.num_classes, dtype=args.dtype,
                      batch_size=args.batch_size, backend=args.backend, device=args.device,
                      workers=args.workers, decode=args.decode, resize=args.resize,
                      crop=args.crop, max_pixels=args.max_pixels, overwrite=args.overwrite,
                      progress=not args.no_progress, **extra)


def run_options(options: JobOptions) -> int:
    """Runs the job; prints rank 0's summary; 2 for a job that cannot start, 130 when
    interrupted (one line saying how far it got and that rerunning resumes), else 0 (bad images
    are listed in the errors file and the summary, they do not fail the job)."""
    try:
        summary = run_job(options)
    except (JobError, SourceError, CheckpointError, RankError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except JobInterrupted as e:  # Ctrl-C: one line, no traceback, on every rank
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before or after the images: nothing half-written to lose
        print(f"{options.kind}: interrupted; rerun the same command to continue",
              file=sys.stderr)
        return 130
    if summary.rank == 0:
        print(summary.report())
    return 0
