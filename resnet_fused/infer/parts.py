"""The job's incremental store: per-rank part files that survive a kill and make a rerun resume.

Each rank appends, per batch, to its own files in ``<out>.parts/``:

- ``rank<R>.<column>.bin``: fixed-width little-endian rows (e.g. 2048 float32 features, or top-k
  class indices and probabilities), written and flushed first;
- ``rank<R>.index.jsonl``: one JSON string per row, the image path, written after the rows, so a
  path is in the index only once its row is complete;
- ``rank<R>.errors.jsonl``: ``{"path": ..., "reason": ...}`` per bad image.

A reader trusts a part up to its last complete index line that also has complete rows; a writer
reopening its rank's files first cuts them back to that point (a kill mid-batch leaves a partial
tail). Images are keyed by path, so a rerun with more or fewer ranks, or a longer input list,
still skips whatever any earlier run finished.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Column:
    """One fixed-width array per image (``dtype`` a little-endian numpy dtype string)."""

    name: str
    dtype: str
    width: int

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.width


def _index_lines(path: str) -> tuple[list[str], list[int]]:
    """The complete, parseable lines of an index file and each one's end offset in bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    paths, ends, offset = [], [], 0
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is incomplete
        offset += len(line) + 1
        try:
            paths.append(json.loads(line))
        except ValueError:
            break
        ends.append(offset)
    return paths, ends


def _error_lines(path: str) -> tuple[list[tuple[str, str]], int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    errors, offset = [], 0
    for line in data.split(b"\n")[:-1]:
        try:
            item = json.loads(line)
            errors.append((item["path"], item["reason"]))
        except (ValueError, KeyError, TypeError):
            break
        offset += len(line) + 1
    return errors, offset


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


@dataclass
class Part:
    """The trusted content of one rank's files."""

    prefix: str
    paths: list[str]
    index_end: int  # bytes of the index file that hold ``paths``
    errors: list[tuple[str, str]]
    errors_end: int

    @classmethod
    def read(cls, prefix: str, columns: Sequence[Column]) -> Part:
        paths, ends = _index_lines(prefix + ".index.jsonl")
        n = len(paths)
        for col in columns:
            n = min(n, _size(f"{prefix}.{col.name}.bin") // col.row_bytes)
        errors, errors_end = _error_lines(prefix + ".errors.jsonl")
        return cls(prefix, paths[:n], ends[n - 1] if n else 0, errors, errors_end)

    def column(self, col: Column) -> np.ndarray:
        """The rows of ``col`` (memory-mapped), shape (len(paths), width)."""
        if not self.paths:
            return np.empty((0, col.width), dtype=col.dtype)
        return np.memmap(f"{self.prefix}.{col.name}.bin", dtype=col.dtype, mode="r",
                         shape=(len(self.paths), col.width))


@dataclass
class Parts:
    """Everything the part files hold: finished paths -> (part, row), and bad paths -> reason."""

    parts: list[Part] = field(default_factory=list)
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def done(self, path: str) -> bool:
        return path in self.rows or path in self.errors


_RANK_FILE = re.compile(r"rank(\d+)\.(index|errors)\.jsonl")


def _prefixes(parts_dir: str) -> list[str]:
    """``<parts_dir>/rank<R>`` for every rank that left files, in rank order."""
    try:
        names = os.listdir(parts_dir)
    except FileNotFoundError:
        return []
    ranks = {int(m.group(1)) for m in map(_RANK_FILE.fullmatch, names) if m}
    return [os.path.join(parts_dir, f"rank{r}") for r in sorted(ranks)]


def read_parts(parts_dir: str, columns: Sequence[Column]) -> Parts:
    parts = Parts()
    for prefix in _prefixes(parts_dir):
        part = Part.read(prefix, columns)
        number = len(parts.parts)
        parts.parts.append(part)
        for row, path in enumerate(part.paths):
            parts.rows.setdefault(path, (number, row))
        for path, reason in part.errors:
            parts.errors.setdefault(path, reason)
    return parts


class PartWriter:
    """Appends one rank's results; reopening cuts a killed run's partial tail first."""

    def __init__(self, parts_dir: str, rank: int, columns: Sequence[Column]) -> None:
        self.prefix = os.path.join(parts_dir, f"rank{rank}")
        self.columns = list(columns)
        trusted = Part.read(self.prefix, self.columns)
        self.rows = len(trusted.paths)
        self._truncate(self.prefix + ".index.jsonl", trusted.index_end)
        self._truncate(self.prefix + ".errors.jsonl", trusted.errors_end)
        for col in self.columns:
            self._truncate(f"{self.prefix}.{col.name}.bin", self.rows * col.row_bytes)
        self._data = {c.name: open(f"{self.prefix}.{c.name}.bin", "ab") for c in self.columns}
        self._index = open(self.prefix + ".index.jsonl", "ab")
        self._errors = open(self.prefix + ".errors.jsonl", "ab")

    @staticmethod
    def _truncate(path: str, size: int) -> None:
        if os.path.exists(path) or size:
            with open(path, "ab") as f:
                f.truncate(size)

    def write(self, paths: Sequence[str], arrays: Mapping[str, np.ndarray],
              errors: Sequence[tuple[str, str]] = ()) -> None:
        """One batch: rows for ``paths`` (in order), then their index lines, then bad images."""
        if paths:
            for col in self.columns:
                rows = np.ascontiguousarray(arrays[col.name], dtype=col.dtype)
                if rows.shape != (len(paths), col.width):
                    raise ValueError(f"column {col.name}: expected rows of shape "
                                     f"{(len(paths), col.width)}, got {rows.shape}")
                self._data[col.name].write(rows.tobytes())
                self._data[col.name].flush()
            self._index.write("".join(json.dumps(p) + "\n" for p in paths).encode())
            self._index.flush()
            self.rows += len(paths)
        if errors:
            self._errors.write("".join(json.dumps({"path": p, "reason": r}) + "\n"
                                       for p, r in errors).encode())
            self._errors.flush()

    def close(self) -> None:
        for f in (*self._data.values(), self._index, self._errors):
            f.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
