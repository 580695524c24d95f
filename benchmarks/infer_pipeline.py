"""End-to-end images/s of the predict/extract job against the model alone on the same images.

    python benchmarks/infer_pipeline.py                      # CPU defaults: 256 images, resnet50
    python benchmarks/infer_pipeline.py --device cuda --dtype bfloat16 --batch-size 256 \\
        --images 8192 --workers 8 --decode cpu gpu           # the GPU session's run

Each round runs every variant once, interleaved (a shared machine's load hits them alike):

- ``job/<decode>/w<workers>``: ``resnet_fused.infer.extract`` over the image files (decode in
  DataLoader workers, preprocess, fused model, write), fresh output each round; its images/s is
  over the batch loop (setup and final merge excluded, both reported), with the job's time split;
- ``model``: the same fused model on the same images already decoded, preprocessed and in device
  memory, same batches, same head (``forward_features`` then the copy to the host).

The corpus is real photographs (scikit-image's samples) re-encoded as JPEGs at ImageNet-like sizes
(random crops, 333-640 px sides), or ``--corpus DIR``; without scikit-image, synthetic colour
fields (the record says which). Weights are random with non-trivial
BatchNorm statistics (speed does not depend on the values). Prints every round and a table;
``--json`` keeps the record (every round, the machine, versions, load average, the command),
``--md`` the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import resnet_fused
from resnet_fused.infer import extract, list_images
from resnet_fused.infer.decode import decode_pil, read_bytes, torchvision_gpu_decoder
from resnet_fused.infer.preprocess import EvalTransform
from resnet_fused.testing import randomize_batchnorm_

SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (480, 640), (500, 500), (400, 300)]


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def source_photos(rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """scikit-image's colour photographs; without scikit-image (an offline GPU machine may lack
    it), smooth random colour fields with noise, said so in the record."""
    try:
        import skimage.data
    except Exception as e:  # any import problem: fall back, and say so
        fields = []
        for _ in range(7):
            low = rng.uniform(0, 255, (6, 8, 3))
            big = np.kron(low, np.ones((80, 80, 1)))  # 480 x 640, blocky colour field
            noise = rng.normal(0, 12, big.shape)
            fields.append(np.clip(big + noise, 0, 255).astype(np.uint8))
        return fields, f"synthetic colour fields (scikit-image unavailable: {type(e).__name__})"
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
              skimage.data.rocket(), skimage.data.hubble_deep_field(), skimage.data.retina(),
              skimage.data.immunohistochemistry()]
    return photos, "scikit-image's colour photographs"


def make_corpus(folder: str, count: int, seed: int = 0) -> tuple[list[str], str]:
    """``count`` JPEGs cut from photographs at ImageNet-like sizes; (paths, what they are)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos, what = source_photos(rng)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = SIZES[rng.integers(len(SIZES))]
        image = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR)
        paths.append(os.path.join(folder, f"img{i:06d}.jpg"))
        image.save(paths[-1], quality=90)
    return paths, f"{count} JPEGs (quality 90, sides 333-640 px) cut from {what}"


def machine(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f
                            if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "python": platform.python_version(), "resnet_fused": resnet_fused.__version__}


def model_only(model, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds for the fused model over ``batches`` (inputs ready on the device)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        for x in batches:
            model.forward_features(x).float().cpu()
        sync()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--corpus", default=None, help="use these images instead (a folder)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 8 on CPU, 256 on GPU")
    parser.add_argument("--dtype", default=None, help="default: float32 CPU, bfloat16 GPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="job variants' DataLoader workers (default: 1 2 on CPU, 8 on GPU)")
    parser.add_argument("--decode", nargs="+", default=None, choices=("cpu", "gpu"),
                        help="job variants' decoders (default: cpu; gpu also on a GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the record here")
    parser.add_argument("--md", default=None, metavar="PATH", help="write the table here")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    batch_size = args.batch_size or (256 if cuda else 8)
    workers = args.workers or ([min(8, os.cpu_count() or 1)] if cuda else [1, 2])
    decoders = args.decode or (["cpu", "gpu"] if cuda else ["cpu"])
    stamp = datetime.datetime.now(datetime.timezone.utc)
    record = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "date": stamp.isoformat(timespec="seconds"), "machine": machine(device),
              "model": args.model, "dtype": dtype, "batch_size": batch_size,
              "backend": args.backend, "load_average_start": load_average(), "rounds": []}
    print(f"# {record['command']}\n# {record['date']}; {record['machine']}")
    print(f"# load average at start: {record['load_average_start']}")

    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        if args.corpus:
            paths, record["corpus"] = list_images([args.corpus]), args.corpus
        else:
            os.makedirs(os.path.join(tmp, "images"))
            paths, record["corpus"] = make_corpus(os.path.join(tmp, "images"), args.images)
        record["images"] = len(paths)
        record["corpus_mb"] = sum(os.path.getsize(p) for p in paths) / 1e6
        generator = torch.Generator().manual_seed(0)
        reference = getattr(resnet_fused, args.model)()
        randomize_batchnorm_(reference, generator)
        weights = os.path.join(tmp, "weights.pth")
        torch.save(reference.state_dict(), weights)

        # The model-only variant: the same images, decoded and preprocessed once, on the device.
        transform = EvalTransform()
        crops = torch.stack([transform.resize_crop(decode_pil(read_bytes(p))) for p in paths])
        torch_dtype = getattr(torch, dtype)
        batches = [transform.normalize(crops[i:i + batch_size].to(device)).to(torch_dtype)
                   .contiguous(memory_format=torch.channels_last)
                   for i in range(0, len(paths), batch_size)]
        fused = resnet_fused.fuse(reference.to(device), backend=args.backend, dtype=torch_dtype)
        model_only(fused, batches[:1], device)  # warm-up

        variants = []
        for decode in decoders:
            if decode == "gpu" and (not cuda or torchvision_gpu_decoder()[0] is None):
                why = "no CUDA device" if not cuda else torchvision_gpu_decoder()[1]
                print(f"# job/gpu: skipped ({why})")
                record.setdefault("skipped", {})["job/gpu"] = why
                continue
            variants += [(f"job/{decode}/w{w}", decode, w) for w in workers]
        variants.append(("model", None, None))

        for r in range(args.rounds):
            for label, decode, nworkers in variants:
                load = load_average()
                row = {"round": r, "variant": label, "load_average": load}
                if decode is None:
                    seconds = model_only(fused, batches, device)
                    row.update(images_per_s=len(paths) / seconds, loop_s=seconds)
                else:
                    summary = extract(paths, weights, os.path.join(tmp, "out", "f.npy"),
                                      model=args.model, dtype=dtype, batch_size=batch_size,
                                      backend=args.backend, device=str(device),
                                      workers=nworkers, decode=decode, overwrite=True,
                                      progress=False)
                    row.update(images_per_s=summary.images_per_s, loop_s=summary.loop_s,
                               setup_s=summary.setup_s, merge_s=summary.merge_s,
                               times_s=vars(summary.times), ok=summary.ok,
                               errors=len(summary.errors))
                record["rounds"].append(row)
                print(f"round {r} {label:<14} {row['images_per_s']:8.1f} images/s  "
                      f"(load {load})" + (f"  split {json.dumps(row.get('times_s'))}"
                                         if decode else ""), flush=True)
    record["load_average_end"] = load_average()
    table = summarize(record)
    print(table)
    for path, text in ((args.json, json.dumps(record, indent=1)), (args.md, table)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + "\n")
    return 0


def summarize(record: dict) -> str:
    by_variant: dict[str, list[dict]] = {}
    for row in record["rounds"]:
        by_variant.setdefault(row["variant"], []).append(row)
    # The same round's model-alone rate: paired ratios cancel load that drifts between rounds.
    model_by_round = {r["round"]: r["images_per_s"] for r in by_variant.get("model", [])}
    m = record["machine"]
    lines = [f"# predict/extract pipeline vs model alone: {record['model']}, {record['dtype']}, "
             f"batch {record['batch_size']}, {record['images']} images",
             "",
             f"{m['device']} ({m['cores']} cores, {m['torch_threads']} torch threads); torch "
             f"{m['torch']}, triton {m['triton']}; {record['date']}; load average "
             f"{record['load_average_start']} at start, {record['load_average_end']} at end.",
             f"Corpus: {record['corpus']} ({record['corpus_mb']:.1f} MB).",
             f"Command: `{record['command']}`",
             "",
             "| variant | images/s median (min-max) | vs model alone, same round: median "
             "(min-max) | wait | preprocess | model | write | worker decode (CPU s) | "
             "worker resize (CPU s) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for variant, rows in by_variant.items():
        rates = [r["images_per_s"] for r in rows]
        ratios = [r["images_per_s"] / model_by_round[r["round"]] for r in rows
                  if r["round"] in model_by_round]
        cells = [variant, f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})",
                 f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%})"
                 if ratios else "-"]
        if "times_s" in rows[0]:
            for key in ("wait", "preprocess", "model", "write", "decode", "resize"):
                cells.append(f"{statistics.median(r['times_s'][key] for r in rows):.2f}")
        else:
            cells += ["-", "-", f"{statistics.median(r['loop_s'] for r in rows):.2f}", "-", "-",
                      "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "wait/preprocess/model/write: seconds of the job's main process per run "
              "(median over rounds); worker decode/resize: CPU seconds summed over the "
              "DataLoader workers. The job's images/s is over its batch loop (setup and merge "
              "excluded)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
