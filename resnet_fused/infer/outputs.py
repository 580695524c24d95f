"""The job's final files, built from the parts in input order, and readers for them.

``extract --out OUT`` (``OUT`` ends in ``.npy``):
    ``OUT``              float32 (rows, features): a row per image that worked, in input order
    ``OUT.index.csv``    ``row,path``: which image each row is
``predict --out OUT`` (``OUT`` ends in ``.csv`` or ``.jsonl``):
    ``.csv``             ``path,class_1[,label_1],prob_1,...,class_k[,label_k],prob_k``
    ``.jsonl``           ``{"path", "classes", ["labels",] "probs"}`` per line
    (one line per image that worked, in input order)
and for both:
    ``OUT.errors.csv``   ``path,reason`` for every image that could not be used, in input order
    ``OUT.job.json``     the settings, counts and time split of the finished job (written last)

While the job runs (or after a kill) the results live in ``OUT.parts/`` (see :mod:`.parts`); the
merge writes each final file under a temporary name and renames it into place.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .parts import Column, Parts

KINDS = ("predict", "extract")
SUFFIXES = {"extract": (".npy",), "predict": (".csv", ".jsonl")}
_CHUNK = 1 << 14  # rows gathered at a time while merging (bounded memory)


@dataclass(frozen=True)
class OutputFiles:
    """Where a job with output ``out`` keeps each of its files."""

    out: str
    kind: str

    # Side files are named after the whole output name, so preds.csv and preds.jsonl (or an
    # extract and a predict job with one stem) never share them.
    @property
    def index(self) -> str | None:
        return self.out + ".index.csv" if self.kind == "extract" else None

    @property
    def errors(self) -> str:
        return self.out + ".errors.csv"

    @property
    def manifest(self) -> str:
        return self.out + ".job.json"

    @property
    def parts(self) -> str:
        return self.out + ".parts"

    def finals(self) -> list[str]:
        return [p for p in (self.out, self.index, self.errors, self.manifest) if p]


def output_files(out: str | os.PathLike, kind: str) -> OutputFiles:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = os.fspath(out)
    if not out.lower().endswith(SUFFIXES[kind]):
        raise ValueError(f"--out {out!r}: {kind} writes {' or '.join(SUFFIXES[kind])} files "
                         f"(name the output with that suffix)")
    return OutputFiles(out, kind)


def columns_for(kind: str, width: int) -> list[Column]:
    """Per-image arrays: extract's features, or predict's top-k classes and probabilities."""
    if kind == "extract":
        return [Column("features", "<f4", width)]
    return [Column("classes", "<i8", width), Column("probs", "<f4", width)]


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name per line (class 0 first); trailing blank lines are ignored."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"--labels {path!r}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"--labels {path!r}: not UTF-8 text: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"--labels {path!r}: line {number} is empty (one label per line)")
    if not lines:
        raise ValueError(f"--labels {path!r}: the file has no labels")
    return [line.strip() for line in lines]


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _prob_text(p: np.float32) -> str:
    return str(np.float32(p))  # the shortest text that reads back as the same float32


def _gather(parts: Parts, locations: np.ndarray, col: Column, mapped: dict) -> np.ndarray:
    """Rows of ``col`` for ``locations`` ((part, row) pairs), in that order."""
    out = np.empty((len(locations), col.width), dtype=col.dtype)
    for part in np.unique(locations[:, 0]):
        key = (int(part), col.name)
        if key not in mapped:
            mapped[key] = parts.parts[int(part)].column(col)
        take = locations[:, 0] == part
        out[take] = mapped[key][locations[take, 1]]
    return out


def merge(files: OutputFiles, inputs: Sequence[str], parts: Parts, columns: Sequence[Column],
          labels: Sequence[str] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Writes the final files for ``inputs`` from ``parts``; returns (rows, errors in order)."""
    missing = [p for p in inputs if not parts.done(p)]
    if missing:
        raise RuntimeError(f"cannot merge: {len(missing)} images have no result in "
                           f"{files.parts} (first: {missing[0]!r})")
    ok = [p for p in inputs if p in parts.rows]
    errors = [(p, parts.errors[p]) for p in inputs if p not in parts.rows]
    locations = np.array([parts.rows[p] for p in ok], dtype=np.int64).reshape(-1, 2)
    mapped: dict = {}
    if files.kind == "extract":
        _write_features(files, ok, locations, parts, columns[0], mapped)
    else:
        _write_predictions(files, ok, locations, parts, columns, labels, mapped)
    tmp = files.errors + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(errors)
    os.replace(tmp, files.errors)
    return len(ok), errors


def _write_features(files, ok, locations, parts, col, mapped) -> None:
    tmp = files.out + ".tmp"
    features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                         shape=(len(ok), col.width))
    for start in range(0, len(ok), _CHUNK):
        features[start:start + _CHUNK] = _gather(parts, locations[start:start + _CHUNK], col,
                                                 mapped)
    features.flush()
    del features
    os.replace(tmp, files.out)
    tmp = files.index + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "path"])
        writer.writerows(enumerate(ok))
    os.replace(tmp, files.index)


def _write_predictions(files, ok, locations, parts, columns, labels, mapped) -> None:
    classes_col, probs_col = columns
    k = classes_col.width
    as_jsonl = files.out.lower().endswith(".jsonl")
    tmp = files.out + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if not as_jsonl:
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"class_{i}"] + ([f"label_{i}"] if labels else []) + [f"prob_{i}"]
            writer.writerow(header)
        for start in range(0, len(ok), _CHUNK):
            loc = locations[start:start + _CHUNK]
            classes = _gather(parts, loc, classes_col, mapped)
            probs = _gather(parts, loc, probs_col, mapped)
            for path, cls, prob in zip(ok[start:start + _CHUNK], classes, probs, strict=True):
                if as_jsonl:
                    item = {"path": path, "classes": [int(c) for c in cls]}
                    if labels:
                        item["labels"] = [labels[c] for c in cls]
                    item["probs"] = [float(_prob_text(p)) for p in prob]
                    f.write(json.dumps(item) + "\n")
                else:
                    row = [path]
                    for c, p in zip(cls, prob, strict=True):
                        row += [int(c)] + ([labels[c]] if labels else []) + [_prob_text(p)]
                    writer.writerow(row)
    os.replace(tmp, files.out)


def read_features(out: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """(features (rows, F) float32, memory-mapped; the path of each row) of an extract job."""
    files = output_files(out, "extract")
    features = np.load(files.out, mmap_mode="r")
    with open(files.index, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    paths = [path for _, path in rows]
    if len(paths) != features.shape[0]:
        raise ValueError(f"{files.index} lists {len(paths)} paths for {features.shape[0]} rows "
                         f"in {files.out}")
    return features, paths


def read_errors(out: str | os.PathLike, kind: str) -> list[tuple[str, str]]:
    """(path, reason) of each image a finished job could not use."""
    with open(output_files(out, kind).errors, newline="", encoding="utf-8") as f:
        return [(p, r) for p, r in list(csv.reader(f))[1:]]
