"""SASS check of a built ``_C`` (no GPU needed): what the GPU would really execute.

For every GPU architecture in the module's fat binary, per kernel: the tensor-core MMA
instructions (``HMMA`` = mma.sync, ``HGMMA`` = Hopper warpgroup MMA) and local-memory accesses
(``LDL``/``STL``: register spills or stack arrays, slow on every GPU). Fails when

- an architecture's conv kernels have no ``HMMA`` at all (the tensor-core path was compiled out),
- ``--require-hgmma ARCH`` is given and no kernel of that architecture has ``HGMMA``, or one of
  its CUTLASS kernels (the implicit-GEMM conv, ``ConvUniversal``, and the persistent 1x1 GEMM,
  ``GemmUniversal``) has none: each must run on warpgroup MMAs,
- any kernel touches local memory.

cuobjdump is not in this machine's CUDA install; Triton's wheel bundles one, which is used when
``cuobjdump`` is not on PATH.

Usage: python .ci/check_sass.py path/to/_C.abi3.so [--require-hgmma sm_90a]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        sys.exit("check_sass: no cuobjdump on PATH and triton (which bundles one) is not installed")
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(path, os.X_OK):
        sys.exit(f"check_sass: no cuobjdump on PATH nor at {path}")
    return path


def kernel_stats(so: str) -> dict[tuple[str, str], collections.Counter]:
    """(arch, kernel) -> instruction counts of interest, from ``cuobjdump --dump-sass``."""
    out = subprocess.run([cuobjdump(), "--dump-sass", so], capture_output=True, text=True,
                         check=True).stdout
    stats: dict[tuple[str, str], collections.Counter] = {}
    arch, kernel = "?", None
    for line in out.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch = m[1]
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            kernel = m[1]
            stats[(arch, kernel)] = collections.Counter()
            continue
        if kernel is None:
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            op = m[1]
            for name in ("HGMMA", "HMMA", "LDL", "STL"):
                if op == name:
                    stats[(arch, kernel)][name] += 1
    return stats


def demangled(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines(), strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("so")
    parser.add_argument("--require-hgmma", action="append", default=[], metavar="ARCH",
                        help="fail unless some kernel of ARCH (e.g. sm_90a) uses HGMMA")
    args = parser.parse_args(argv)
    stats = kernel_stats(args.so)
    if not stats:
        print(f"FAIL: no GPU code in {args.so}")
        return 1
    names = demangled(sorted({k for _, k in stats}))
    failures = []
    by_arch: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (arch, kernel), c in sorted(stats.items()):
        by_arch[arch].update(c)
        by_arch[arch]["kernels"] += 1
        if c["LDL"] or c["STL"]:
            failures.append(f"{arch} {names[kernel][:150]}: local memory (LDL {c['LDL']}, "
                            f"STL {c['STL']})")
    for arch, c in sorted(by_arch.items()):
        print(f"   {arch}: {c['kernels']} kernels, HMMA {c['HMMA']}, HGMMA {c['HGMMA']}, "
              f"LDL {c['LDL']}, STL {c['STL']}")
        if not c["HMMA"] and not c["HGMMA"]:
            failures.append(f"{arch}: no tensor-core MMA instruction in any kernel")
    for arch in args.require_hgmma:
        if not by_arch.get(arch, collections.Counter())["HGMMA"]:
            failures.append(f"{arch}: no HGMMA (warpgroup MMA) in any kernel")
        cutlass = {kind: [k for (a, k) in stats if a == arch and kind in k]
                   for kind in ("ConvUniversal", "GemmUniversal")}
        for kind, kernels in cutlass.items():
            print(f"   {arch}: {len(kernels)} CUTLASS {kind} kernels, "
                  f"{sum(1 for k in kernels if stats[(arch, k)]['HGMMA'])} with HGMMA")
            if not kernels:
                failures.append(f"{arch}: no CUTLASS {kind} kernel in the build")
            failures += [f"{arch} {names[k][:150]}: a CUTLASS {kind} kernel without HGMMA"
                         for k in kernels if not stats[(arch, k)]["HGMMA"]]
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
