"""The GPU tiers' tests name only what exists: checked here, on any machine.

Tests that need a GPU run only when a GPU is lent (minutes of it, rarely). A test that calls a
function the package no longer has fails there, on the GPU's time, and hides whatever it was
meant to check (a GPU session found ``configs.clear_cache`` gone that way). This reads every
test file and benchmark script, finds the package's modules they import (``from resnet_fused...
import x [as y]``, ``import resnet_fused...``) and checks that every attribute they read from
those modules (``y.name``) and every op they call (``torch.ops.resnet_fused.name``) exists.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest
import torch

import resnet_fused  # noqa: F401  (loads the ops)

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = sorted([*REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py")])


def _modules_in(tree: ast.AST) -> dict[str, object]:
    """Local name -> the package module it is bound to (only names bound to modules)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_fused"):
            for alias in node.names:
                try:
                    module = importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    continue  # a function or class, not a module
                bound[alias.asname or alias.name] = module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("resnet_fused") and alias.asname:
                    bound[alias.asname] = importlib.import_module(alias.name)
    return bound


def _op_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        # torch.ops.resnet_fused.<name>
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "resnet_fused" and isinstance(node.value.value,
                                                                      ast.Attribute)
                and node.value.value.attr == "ops"):
            names.add(node.attr)
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_names_used_exist(path):
    tree = ast.parse(path.read_text(), str(path))
    modules = _modules_in(tree)
    missing = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and isinstance(node.ctx, ast.Load)):
            module = modules[node.value.id]
            if not hasattr(module, node.attr):
                missing.append(f"line {node.lineno}: {node.value.id}.{node.attr} "
                               f"({module.__name__} has no {node.attr!r})")
    triton_ops = {"triton_conv_bn_act", "triton_add_relu"}
    if triton_ops & _op_names(tree):
        import resnet_fused.triton  # noqa: F401  (registers the Triton ops)
    for name in sorted(_op_names(tree)):
        if not hasattr(torch.ops.resnet_fused, name):
            missing.append(f"torch.ops.resnet_fused.{name} does not exist")
    assert not missing, "\n".join(missing)
