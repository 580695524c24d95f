"""Progress bars for the long CLI jobs (check, sweep, bench) that never fail a run.

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
