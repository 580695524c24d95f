"""The reference ResNet family: torchvision v1.5 structure, state_dict keys, weight loading.

The expected state_dict is derived here from the v1.5 rules (nothing copied from torchvision):
stem ``conv1``/``bn1``; stages ``layer1..4`` with planes 64/128/256/512 and stride 1/2/2/2; block
``layerX.Y`` has ``conv1/bn1, conv2/bn2`` (BasicBlock, 3x3 + 3x3, stride on conv1) or
``conv1/bn1, conv2/bn2, conv3/bn3`` (Bottleneck, 1x1 + 3x3 + 1x1, expansion 4, stride on the 3x3
conv2), plus ``downsample.0`` (1x1 conv, the block's stride) / ``downsample.1`` (BN) only on a
stage's first block when the stride or channel count changes; ``fc``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import resnet_fused
from resnet_fused.testing import import_or_skip, randomize_batchnorm_

ARCHS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}


def expected_layout(block: str, layers: list[int], num_classes: int = 1000):
    """(state_dict {key: shape}, {conv name: stride}) of a torchvision v1.5 ResNet."""
    shapes: dict[str, tuple[int, ...]] = {}
    strides: dict[str, int] = {}

    def conv(name, cout, cin, k, stride=1):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        strides[name] = stride

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7, 2)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers, strict=True), 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if (stage > 1 and b == 0) else 1
            if block == "basic":
                out = planes
                conv(f"{p}.conv1", planes, inplanes, 3, stride)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                out = planes * 4
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3, stride)  # v1.5: stride on the 3x3
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", out, planes, 1)
                bn(f"{p}.bn3", out)
            if stride != 1 or inplanes != out:
                conv(f"{p}.downsample.0", out, inplanes, 1, stride)
                bn(f"{p}.downsample.1", out)
            inplanes = out
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes, strides


def n_parameters(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for key, shape in shapes.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


@pytest.fixture(scope="module")
def models():
    """Each architecture built once for the structural tests (they don't modify it)."""
    return {name: getattr(resnet_fused, name)() for name in ARCHS}


@pytest.mark.parametrize("name", list(ARCHS))
def test_state_dict_keys_and_shapes(name, models):
    block, layers = ARCHS[name]
    shapes, _ = expected_layout(block, layers)
    sd = models[name].state_dict()
    assert list(sd) == list(shapes), "keys (and their order) differ from torchvision v1.5's"
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes


@pytest.mark.parametrize("name", list(ARCHS))
def test_strides_follow_v1_5(name, models):
    block, layers = ARCHS[name]
    _, strides = expected_layout(block, layers)
    got = {n: m.stride[0] for n, m in models[name].named_modules() if isinstance(m, nn.Conv2d)}
    assert got == strides
    for m in models[name].modules():
        if isinstance(m, nn.Conv2d):
            assert m.stride[0] == m.stride[1] and m.bias is None
            assert m.padding == (m.kernel_size[0] // 2,) * 2


@pytest.mark.parametrize("name", list(ARCHS))
def test_parameter_counts(name, models):
    block, layers = ARCHS[name]
    shapes, _ = expected_layout(block, layers)
    count = sum(p.numel() for p in models[name].parameters())
    assert count == n_parameters(shapes)
    if name == "resnet50":
        assert count == 25_557_032


def test_basic_block_3463_is_resnet34_not_resnet50():
    """The docs' note: a BasicBlock net with layers [3, 4, 6, 3] is ResNet-34."""
    shapes, _ = expected_layout("basic", [3, 4, 6, 3])
    assert n_parameters(shapes) == sum(p.numel() for p in resnet_fused.resnet34().parameters())
    assert n_parameters(shapes) != 25_557_032


@pytest.mark.parametrize("name", list(ARCHS))
def test_forward_shapes(name, models, generator):
    model = models[name].eval()
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        y = model(x)
        f = model.forward_features(x)
    expansion = 1 if ARCHS[name][0] == "basic" else 4
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert f.shape == (1, 512 * expansion)


@pytest.mark.parametrize("num_classes", [1, 10, 37])
def test_num_classes(num_classes, generator):
    model = resnet_fused.resnet18(num_classes=num_classes).eval()
    assert model.fc.out_features == num_classes
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, generator=generator)).shape == (2, num_classes)
    shapes, _ = expected_layout("basic", [2, 2, 2, 2], num_classes)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        resnet_fused.resnet18(num_classes=bad)


# --- torchvision / timm, when installed (the GPU machine has them) --------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_same_state_dict_as_torchvision(name, models):
    tv = import_or_skip("torchvision")
    ref = getattr(tv.models, name)(weights=None).state_dict()
    ours = models[name].state_dict()
    assert list(ours) == list(ref)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_load_strictly_and_match(name, generator):
    tv = import_or_skip("torchvision")
    ref = randomize_batchnorm_(getattr(tv.models, name)(weights=None), generator).eval()
    ours = getattr(resnet_fused, name)(weights=ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_timm_weights_load_strictly(generator):
    timm = import_or_skip("timm")
    ref = randomize_batchnorm_(timm.create_model("resnet50", pretrained=False), generator).eval()
    ours = resnet_fused.resnet50(weights=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


# --- weights= ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source():
    """A resnet18 (10 classes) with random weights and BN statistics, and a copy of its state dict.

    Module-scoped (building and randomizing it is the slow part); tests only read it.
    """
    generator = torch.Generator().manual_seed(7)
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=10), generator)
    with torch.no_grad():
        model.fc.bias.copy_(torch.randn(10, generator=generator))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, sd):
    got = model.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def _save(kind, sd, path):
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)


def test_weights_state_dict(source):
    _, sd = source
    assert_same_state(resnet_fused.resnet18(num_classes=10, weights=sd), sd)


@pytest.mark.parametrize("suffix", ["pth", "pt", "safetensors"])
@pytest.mark.parametrize("as_str", [True, False], ids=["str", "pathlike"])
def test_weights_path(suffix, as_str, source, tmp_path):
    _, sd = source
    path = tmp_path / f"weights.{suffix}"
    _save(suffix, sd, path)
    model = resnet_fused.resnet18(num_classes=10, weights=str(path) if as_str else path)
    assert_same_state(model, sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_weights_wrapped_checkpoint(wrapper, source, tmp_path):
    _, sd = source
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: sd, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    assert_same_state(resnet_fused.resnet18(num_classes=10, weights=path), sd)


@pytest.mark.parametrize("where", ["dict", "pth", "wrapped", "safetensors"])
def test_weights_module_prefix(where, source, tmp_path):
    _, sd = source
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    if where == "dict":
        weights = prefixed
    else:
        weights = tmp_path / ("w.safetensors" if where == "safetensors" else "w.pth")
        _save(where, {"state_dict": prefixed} if where == "wrapped" else prefixed, weights)
    assert_same_state(resnet_fused.resnet18(num_classes=10, weights=weights), sd)


def test_load_weights_into_existing_model(source):
    _, sd = source
    model = resnet_fused.resnet18(num_classes=10)
    assert resnet_fused.load_weights(model, sd) is model
    assert_same_state(model, sd)
    assert resnet_fused.load_weights(model, None) is model


def test_loaded_model_computes_like_source(source, generator):
    model, sd = source
    loaded = resnet_fused.resnet18(num_classes=10, weights=copy.deepcopy(sd)).eval()
    x = torch.randn(1, 3, 40, 36, generator=generator)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_weights_wrong_key_raises(source):
    _, sd = source
    bad = dict(sd)
    bad["layer1.0.conv_one.weight"] = bad.pop("layer1.0.conv1.weight")
    with pytest.raises(resnet_fused.WeightsError, match=r"layer1\.0\.conv"):
        resnet_fused.resnet18(num_classes=10, weights=bad)


def test_weights_missing_key_raises(source):
    _, sd = source
    bad = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.raises(resnet_fused.WeightsError, match=r"fc\.bias"):
        resnet_fused.resnet18(num_classes=10, weights=bad)


def test_weights_unexpected_key_raises(source):
    _, sd = source
    bad = {**sd, "head.weight": torch.zeros(3)}
    with pytest.raises(resnet_fused.WeightsError, match=r"head\.weight"):
        resnet_fused.resnet18(num_classes=10, weights=bad)


def test_weights_wrong_num_classes_says_what_to_pass(source):
    _, sd = source
    with pytest.raises(resnet_fused.WeightsError) as info:
        resnet_fused.resnet18(weights=sd)
    assert str(info.value) == ("weights: the checkpoint has 10 classes, this resnet18 1000 "
                               "(pass num_classes=10)")


@pytest.mark.parametrize("arch", ["resnet34", "resnet50"])
def test_weights_of_another_architecture_say_what_they_are(arch, source, tmp_path):
    _, sd = source
    path = tmp_path / "resnet18_10cls.pth"
    torch.save(sd, path)
    for weights in (sd, path):
        with pytest.raises(resnet_fused.WeightsError) as info:
            getattr(resnet_fused, arch)(weights=weights)
        assert str(info.value) == (
            f"weights: the checkpoint is resnet18 with 10 classes, not a {arch} (use "
            "resnet_fused.resnet18(num_classes=10, weights=...))")


def test_weights_files_that_are_no_state_dict(source, tmp_path):
    """A pickled whole model and a garbage file: one line each, no ANSI escapes, the remedy."""
    model, _ = source
    whole = tmp_path / "whole.pth"
    torch.save(model, whole)
    with pytest.raises(resnet_fused.WeightsError) as info:
        resnet_fused.resnet18(num_classes=10, weights=whole)
    message = str(info.value)
    assert "pickled Python object" in message and "torch.save(model.state_dict(), path)" in message
    assert "\x1b" not in message and len(message.splitlines()) == 1
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"gibberish, not a checkpoint" * 10)
    with pytest.raises(resnet_fused.WeightsError, match="is not a PyTorch checkpoint") as info:
        resnet_fused.resnet18(weights=garbage)
    assert len(str(info.value).splitlines()) == 1


def test_weights_missing_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint file .*nope\.pth"):
        resnet_fused.resnet18(weights=missing)
    with pytest.raises(FileNotFoundError):
        resnet_fused.resnet50(weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("bad", [42, 1.5, [1, 2]])
def test_weights_bad_type(bad):
    with pytest.raises(TypeError, match="weights"):
        resnet_fused.resnet18(weights=bad)


def test_a_broken_optional_import_skips_with_its_reason(monkeypatch):
    """A torchvision built for another torch raises RuntimeError at import (not ImportError):
    the optional tests must skip, saying why, instead of failing."""
    import importlib

    real = importlib.import_module

    def broken(name, *args):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(pytest.skip.Exception, match="RuntimeError: operator torchvision::nms"):
        import_or_skip("torchvision")
