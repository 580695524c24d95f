"""Optional integrations (torchvision, timm) in tests: absent, whatever the reason, means skip."""

from __future__ import annotations


def try_import(name: str):
    """``(module, None)``, or ``(None, reason)`` when importing ``name`` fails for ANY reason.

    A torchvision built for another torch raises ``RuntimeError: operator torchvision::nms does
    not exist`` at import, not ImportError; optional integrations must treat that as "absent".
    """
    import importlib

    try:
        return importlib.import_module(name), None
    except Exception as e:
        return None, f"could not import {name!r}: {type(e).__name__}: {e}"


def import_or_skip(name: str):
    """Like ``pytest.importorskip``, but skips on any import failure, with the reason."""
    module, why = try_import(name)
    if module is None:
        import pytest

        pytest.skip(why)
    return module
