"""The job's incremental store: per-rank part files that survive a kill and make a rerun resume.

Each rank appends, per batch, to its own files in ``<out>.parts/``:

- ``rank<R>.<column>.bin``: fixed-width little-endian rows (e.g. 2048 float32 features, or top-k
  class indices and probabilities), written and flushed first;
- ``rank<R>.index.jsonl``: one JSON line per row, ``[path, size, mtime_ns]`` (the file as the job
  listed it), written after the rows, so a path is in the index only once its row is complete;
- ``rank<R>.errors.jsonl``: ``{"path": ..., "reason": ..., "stat": [size, mtime_ns]}`` per bad
  image.

A reader trusts a part up to its last complete index line that also has complete rows; a writer
reopening its rank's files first cuts them back to that point (a kill mid-batch leaves a partial
tail). Images are keyed by path and the file's size and modification time, so a rerun with more
or fewer ranks, or a longer input list, skips whatever any earlier run finished, and recomputes an
image whose file changed since (:attr:`Parts.changed` names them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Stat = tuple[int, int]  # (size in bytes, modification time in ns) of an input file
UNREADABLE: Stat = (-1, -1)


def file_stat(path: str) -> Stat:
    """What identifies an input's content cheaply: a file rewritten since has another size or
    modification time (editors, copies and downloads all set it)."""
    try:
        st = os.stat(path)
    except OSError:
        return UNREADABLE  # the job reports why when it reads the file
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Column:
    """One fixed-width array per image (``dtype`` a little-endian numpy dtype string)."""

    name: str
    dtype: str
    width: int

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.width


def _entry(item) -> tuple[str, Stat | None]:
    """An index line's (path, stat); a bare path string has no stat (matches any)."""
    if isinstance(item, str):
        return item, None
    path, size, mtime = item  # ValueError/TypeError for anything else
    if not isinstance(path, str):
        raise TypeError(path)
    return path, (int(size), int(mtime))


def _index_lines(path: str) -> tuple[list[tuple[str, Stat | None]], list[int]]:
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
            paths.append(_entry(json.loads(line)))
        except (ValueError, TypeError):
            break
        ends.append(offset)
    return paths, ends


def _error_lines(path: str) -> tuple[list[tuple[str, str, Stat | None]], int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    errors, offset = [], 0
    for line in data.split(b"\n")[:-1]:
        try:
            item = json.loads(line)
            stat = item.get("stat")
            errors.append((item["path"], item["reason"],
                           None if stat is None else (int(stat[0]), int(stat[1]))))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
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
    stats: list[Stat | None]  # each row's input file as it was read (None: not recorded)
    index_end: int  # bytes of the index file that hold ``paths``
    errors: list[tuple[str, str, Stat | None]]
    errors_end: int

    @classmethod
    def read(cls, prefix: str, columns: Sequence[Column]) -> Part:
        entries, ends = _index_lines(prefix + ".index.jsonl")
        n = len(entries)
        for col in columns:
            n = min(n, _size(f"{prefix}.{col.name}.bin") // col.row_bytes)
        errors, errors_end = _error_lines(prefix + ".errors.jsonl")
        return cls(prefix, [p for p, _ in entries[:n]], [st for _, st in entries[:n]],
                   ends[n - 1] if n else 0, errors, errors_end)

    def column(self, col: Column) -> np.ndarray:
        """The rows of ``col`` (memory-mapped), shape (len(paths), width)."""
        if not self.paths:
            return np.empty((0, col.width), dtype=col.dtype)
        return np.memmap(f"{self.prefix}.{col.name}.bin", dtype=col.dtype, mode="r",
                         shape=(len(self.paths), col.width))


@dataclass
class Parts:
    """Everything the part files hold that is still valid: finished paths -> (part, row), bad
    paths -> reason, and the paths whose file changed since its result was written."""

    parts: list[Part] = field(default_factory=list)
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

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


def read_parts(parts_dir: str, columns: Sequence[Column],
               current: Mapping[str, Stat] | None = None) -> Parts:
    """The parts in ``parts_dir``. With ``current`` (each input's :func:`file_stat` now), a result
    counts only if it was computed from the file as it is now; the others are in ``changed``."""
    parts = Parts()

    def valid(path: str, stat: Stat | None) -> bool:
        if current is None or stat is None or current.get(path, stat) == stat:
            return True
        parts.changed.add(path)
        return False

    for prefix in _prefixes(parts_dir):
        part = Part.read(prefix, columns)
        number = len(parts.parts)
        parts.parts.append(part)
        for row, (path, stat) in enumerate(zip(part.paths, part.stats, strict=True)):
            if valid(path, stat):
                parts.rows.setdefault(path, (number, row))
        for path, reason, stat in part.errors:
            if valid(path, stat):
                parts.errors.setdefault(path, reason)
    parts.changed -= parts.rows.keys() | parts.errors.keys()  # recomputed since
    return parts


class PartWriter:
    """Appends one rank's results; reopening cuts a killed run's partial tail first. With
    ``stats`` (path -> :func:`file_stat`), each row and bad image records its file's stat."""

    def __init__(self, parts_dir: str, rank: int, columns: Sequence[Column],
                 stats: Mapping[str, Stat] | None = None) -> None:
        self.prefix = os.path.join(parts_dir, f"rank{rank}")
        self.columns = list(columns)
        self.stats = stats
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
            self._index.write("".join(json.dumps(self._entry(p)) + "\n" for p in paths).encode())
            self._index.flush()
            self.rows += len(paths)
        if errors:
            self._errors.write("".join(json.dumps(self._error(p, r)) + "\n"
                                       for p, r in errors).encode())
            self._errors.flush()

    def _entry(self, path: str):
        return path if self.stats is None else [path, *self.stats[path]]

    def _error(self, path: str, reason: str) -> dict:
        item = {"path": path, "reason": reason}
        if self.stats is not None:
            item["stat"] = list(self.stats[path])
        return item

    def close(self) -> None:
        for f in (*self._data.values(), self._index, self._errors):
            f.close()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
