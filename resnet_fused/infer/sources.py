"""The input list: PATHS (files, folders scanned recursively, glob patterns) -> image paths.

The order is the order of PATHS; inside a folder, entries in name order (depth first); a glob's
matches sorted. A file reached twice is kept once, at its first place. Files named explicitly are
taken whatever their suffix; a folder scan takes the suffixes in ``IMAGE_EXTENSIONS``.

Everything here fails before any work starts, with a :class:`SourceError` naming the path: a path
that does not exist, a folder that cannot be read, a pattern that matches nothing, no images.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence

from .decode import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


class SourceError(ValueError):
    """A PATHS entry that cannot be used."""


def _scan_folder(folder: str, extensions: tuple[str, ...], seen_dirs: set[str]) -> Iterator[str]:
    real = os.path.realpath(folder)
    if real in seen_dirs:  # a symlink loop, or the same folder reached twice
        return
    seen_dirs.add(real)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise SourceError(f"cannot read folder {folder!r}: {e.strerror or e}") from e
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks, as a user expects of a folder
        except OSError:
            is_dir = False
        if is_dir:
            yield from _scan_folder(entry.path, extensions, seen_dirs)
        elif entry.name.lower().endswith(extensions):
            yield entry.path


def _expand(path: str, extensions: tuple[str, ...], seen_dirs: set[str]) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _scan_folder(path, extensions, seen_dirs)
    elif os.path.exists(path):
        yield path
    elif _GLOB_CHARS & set(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise SourceError(f"{path!r}: the pattern matches no file or folder")
        for match in matches:
            yield from _expand(match, extensions, seen_dirs)
    else:
        raise SourceError(f"{path!r}: no such file or folder")


def list_images(paths: Sequence[str | os.PathLike],
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """The ordered, de-duplicated list of image files that ``paths`` names."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise SourceError("no PATHS given: name image files, folders or glob patterns")
    extensions = tuple(e.lower() for e in extensions)
    out: list[str] = []
    seen_files: set[str] = set()
    seen_dirs: set[str] = set()
    for raw in paths:
        path = os.fspath(raw)
        for found in _expand(path, extensions, seen_dirs):
            key = os.path.abspath(found)
            if key not in seen_files:
                seen_files.add(key)
                out.append(os.path.normpath(found))
    if not out:
        raise SourceError(f"no images found in {', '.join(map(os.fspath, paths))} (a folder scan "
                          f"takes {', '.join(extensions)})")
    return out
