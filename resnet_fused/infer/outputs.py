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
    ``OUT.inputs.csv``   ``path,size,mtime_ns``: every input as the job read it, in input order
    ``OUT.job.json``     the settings, counts and time split of the finished job (written last)

A later job with the same settings and more (or other) inputs reopens the finished files
(:func:`reopen`): what is still listed and unchanged becomes a part again, and only the rest is
computed.

While the job runs (or after a kill) the results live in ``OUT.parts/`` (see :mod:`.parts`); the
merge writes each final file under a temporary name and renames it into place.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .parts import Column, Parts, PartWriter, Stat

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
    def inputs(self) -> str:
        return self.out + ".inputs.csv"

    @property
    def manifest(self) -> str:
        return self.out + ".job.json"

    @property
    def parts(self) -> str:
        return self.out + ".parts"

    def finals(self) -> list[str]:
        return [p for p in (self.out, self.index, self.errors, self.inputs, self.manifest) if p]


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


def merge(files: OutputFiles, inputs: Sequence[str], stats: Mapping[str, Stat], parts: Parts,
          columns: Sequence[Column], labels: Sequence[str] | None = None,
          ) -> tuple[int, list[tuple[str, str]]]:
    """Writes the final files for ``inputs`` (each input's file stat in ``stats``) from
    ``parts``; returns (rows, errors in order)."""
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
    tmp = files.inputs + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "size", "mtime_ns"])
        writer.writerows((p, *stats[p]) for p in inputs)
    os.replace(tmp, files.inputs)
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


def read_inputs(files: OutputFiles) -> list[tuple[str, Stat]] | None:
    """(path, stat) of every input of the finished job, or None where the file is missing (an
    output written before the package recorded it)."""
    try:
        with open(files.inputs, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
    except FileNotFoundError:
        return None
    try:
        return [(p, (int(size), int(mtime))) for p, size, mtime in rows]
    except ValueError as e:
        raise ValueError(f"{files.inputs}: not a list of path,size,mtime_ns rows ({e})") from e


def _read_predictions(files: OutputFiles, k: int, labels: bool):
    """(path, classes, probs) per row of a finished predict output."""
    if files.out.lower().endswith(".jsonl"):
        with open(files.out, encoding="utf-8") as f:
            for line in f:
                item = json.loads(line, parse_float=np.float32)  # text -> float32 directly
                yield item["path"], item["classes"], item["probs"]
        return
    step = 3 if labels else 2
    with open(files.out, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)  # the header
        for row in rows:
            fields = row[1:]
            if len(fields) != step * k:
                raise ValueError(f"{files.out}: a row has {len(fields)} fields after the path, "
                                 f"expected {step * k}")
            yield row[0], fields[0::step], fields[step - 1::step]


def reopen(files: OutputFiles, keep: Mapping[str, Stat], columns: Sequence[Column],
           labels: bool, parts_dir: str) -> None:
    """Writes the rows and bad images of the finished job whose path is in ``keep`` into a part
    in ``parts_dir`` (recording their stats), so a job over more inputs computes only the others.
    Values come back bit for bit (the CSV and JSON hold each float32 probability as the shortest
    text that reads back as it)."""
    with PartWriter(parts_dir, 0, columns, stats=keep) as writer:
        if files.kind == "extract":
            features, paths = read_features(files.out)
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start:start + _CHUNK]
                take = [i for i, p in enumerate(chunk) if p in keep]
                writer.write([chunk[i] for i in take],
                             {columns[0].name: np.asarray(features[start:start + _CHUNK][take])})
        else:
            classes_col, probs_col = columns
            paths, classes, probs = [], [], []

            def flush() -> None:
                writer.write(paths, {classes_col.name: np.array(classes, dtype=np.int64),
                                     probs_col.name: np.array(probs, dtype=np.float32)})
                paths.clear(), classes.clear(), probs.clear()

            for path, cls, prob in _read_predictions(files, classes_col.width, labels):
                if path in keep:
                    paths.append(path)
                    classes.append([int(c) for c in cls])
                    probs.append([np.float32(p) for p in prob])
                if len(paths) == _CHUNK:
                    flush()
            flush()
        writer.write([], {}, [(p, r) for p, r in read_errors(files.out, files.kind) if p in keep])
