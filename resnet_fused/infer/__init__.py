"""The user's job: run the fused model over folders of images, for predictions or features.

    from resnet_fused import infer
    infer.predict(["photos/"], weights="resnet50.pth", out="preds.csv", labels="labels.txt")
    infer.extract(["photos/", "more/*.jpg"], weights="resnet50.pth", out="features.npy")
    features, paths = infer.read_features("features.npy")

The same job from the command line is ``python -m resnet_fused predict|extract PATHS ...``, and
under ``torchrun --nproc-per-node=G`` it shards over G processes and merges to the same output.
Modules: ``sources`` (PATHS -> files), ``decode`` (Pillow, GPU JPEG), ``preprocess`` (the
torchvision eval transform), ``loader`` (DataLoader workers), ``checkpoint`` (model + checks),
``parts`` (incremental, resumable store), ``outputs`` (final files), ``distributed`` (torchrun),
``job`` (the loop, timings, summary), ``cli`` (the two commands).
"""

from .checkpoint import CheckpointError
from .job import JobError, JobInterrupted, JobOptions, Summary, extract, predict, run_job
from .outputs import read_errors, read_features, read_labels
from .preprocess import EvalTransform
from .sources import SourceError, list_images

__all__ = [
    "CheckpointError",
    "EvalTransform",
    "JobError",
    "JobInterrupted",
    "JobOptions",
    "SourceError",
    "Summary",
    "extract",
    "list_images",
    "predict",
    "read_errors",
    "read_features",
    "read_labels",
    "run_job",
]
