"""Progress bars for the long CLI jobs (check, sweep, bench, predict, extract); never fail a run.

tqdm is a dependency, but a GPU machine without network may lack it: then the job runs without a
bar. No bar either when stderr is not a terminal, so logs do not fill with redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress(items: Iterable, desc: str, unit: str = "it") -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:
        print("(tqdm is not installed: no progress bar; `pip install tqdm` for one)",
              file=sys.stderr)
        return items
    return tqdm(items, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=None)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def counter(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A bar advanced by hand (``update(n)``, ``close()``) that shows the rate in ``unit``/s,
    e.g. images/s for a job that works in batches; a no-op object without tqdm or when not
    ``enabled``."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print("(tqdm is not installed: no progress bar; `pip install tqdm` for one)",
              file=sys.stderr)
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None,
                smoothing=0.1, dynamic_ncols=True)
