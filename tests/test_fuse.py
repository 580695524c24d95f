"""``fuse()``: a fused ResNet gives the source model's eval outputs, and refuses what it can't fuse.

fp32 fused models are compared with the source model run in float64 (bound
``tolerance(float32, "model")``); bf16/fp16 fused models with the fp32 source model. Every model
gets random BatchNorm statistics (``randomize_batchnorm_``): a fresh BN would hide folding bugs.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet_fused
from resnet_fused import FusedResNet, fuse
from resnet_fused.fused import FusedConvBNAct
from resnet_fused.testing import (
    freeze_batchnorm,
    import_or_skip,
    randomize_batchnorm_,
    relative_error,
    tolerance,
)

CL = torch.channels_last
NUM_CLASSES = 10
ARCHS = ["resnet18", "resnet34", "resnet50"]


def random_model(name: str, generator: torch.Generator) -> nn.Module:
    model = getattr(resnet_fused, name)(num_classes=NUM_CLASSES)
    randomize_batchnorm_(model, generator)
    with torch.no_grad():
        model.fc.bias.copy_(torch.randn(NUM_CLASSES, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def zoo():
    """Random models (and their float64 twins) built once per module; tests must not modify them."""
    generator = torch.Generator().manual_seed(11)
    cache: dict[str, tuple[nn.Module, nn.Module]] = {}

    def get(name: str) -> tuple[nn.Module, nn.Module]:
        if name not in cache:
            model = random_model(name, generator)
            cache[name] = (model, copy.deepcopy(model).double())
        return cache[name]

    return get


def reference(model64: nn.Module, x: torch.Tensor, features: bool = False) -> torch.Tensor:
    with torch.no_grad():
        x64 = x.double()
        return model64.forward_features(x64) if features else model64(x64)


def assert_model_close(y, ref, dtype=torch.float32):
    err = relative_error(y, ref)
    bound = tolerance(dtype, "model")
    assert err <= bound, f"relative error {err:.3g} > {bound:g} ({dtype})"


# --- equivalence -------------------------------------------------------------------------------

SHAPES = [(2, 3, 64, 64), (1, 3, 57, 71)]


# The aten backend on resnet18/50 only: it is the slow reference path, and resnet34 adds nothing.
BACKEND_ARCHS = [("cpu", a) for a in ARCHS] + [("aten", "resnet18"), ("aten", "resnet50")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("backend", "name"), BACKEND_ARCHS,
                         ids=[f"{b}-{a}" for b, a in BACKEND_ARCHS])
def test_fused_matches_source(name, shape, backend, zoo, generator):
    model, model64 = zoo(name)
    fused = fuse(model, backend=backend)
    x = torch.randn(*shape, generator=generator)
    with torch.no_grad():
        y = fused(x)
    assert y.dtype == torch.float32 and y.shape == (shape[0], NUM_CLASSES)
    assert_model_close(y, reference(model64, x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_forward_features(name, zoo, generator):
    model, model64 = zoo(name)
    fused = fuse(model, backend="cpu")
    x = torch.randn(2, 3, 48, 56, generator=generator)
    with torch.no_grad():
        f = fused.forward_features(x)
    assert f.shape == (2, model.fc.in_features)
    assert_model_close(f, reference(model64, x, features=True))
    # forward == fc(forward_features)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), fused.fc(f), rtol=0, atol=0)


def _stage_outputs(model, x):
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        outputs = {}
        for i in range(1, 5):
            x = getattr(model, f"layer{i}")(x)
            outputs[f"layer{i}"] = x
    return outputs


@pytest.mark.parametrize("backend", ["cpu", "aten"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_forward_stages(name, backend, zoo, generator):
    """C2-C5 for a feature pyramid: each stage's output as the source model computes it, and
    none overwritten by the stages after it (the fast path reuses activations in place)."""
    model, model64 = zoo(name)
    fused = fuse(model, backend=backend)
    x = torch.randn(2, 3, 64, 48, generator=generator)
    with torch.no_grad():
        stages = fused.forward_stages(x)
    expected = _stage_outputs(model64, x.double())
    assert list(stages) == ["layer1", "layer2", "layer3", "layer4"]
    for key, ref in expected.items():
        assert stages[key].shape == ref.shape, key
        assert_model_close(stages[key], ref)
    with torch.no_grad():
        pooled = stages["layer4"].float().mean((2, 3))
        torch.testing.assert_close(pooled, fused.forward_features(x), rtol=1e-6, atol=1e-6)


# --- FrozenBatchNorm2d (detection backbones) ----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_frozen_batchnorm_model(name, dtype, zoo, generator):
    """A ResNet whose BatchNorms are FrozenBatchNorm2d fuses to the same function."""
    model, model64 = zoo(name)
    frozen = freeze_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    fused = fuse(frozen, dtype=dtype)
    x = torch.randn(2, 3, 40, 56, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = frozen(x) if dtype != torch.float32 else reference(model64, x)
    # The frozen source model itself equals the BatchNorm one (the test's own FrozenBatchNorm2d).
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-5, atol=1e-5)
    assert_model_close(y, ref, dtype)


def test_torchvision_frozen_batchnorm_backbone(generator):
    """torchvision's own FrozenBatchNorm2d, as its detection models build their backbones."""
    tv = import_or_skip("torchvision")
    from torchvision.ops import FrozenBatchNorm2d

    model = tv.models.resnet50(num_classes=NUM_CLASSES, norm_layer=FrozenBatchNorm2d)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        y = fuse(model)(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert_model_close(y, ref)


def test_auto_backend_is_cpu_on_cpu(zoo, generator):
    model, _ = zoo("resnet18")
    x = torch.randn(1, 3, 40, 40, generator=generator)
    with torch.no_grad():
        assert torch.equal(fuse(model)(x), fuse(model, backend="cpu")(x))


@pytest.mark.parametrize("hw", [(1, 1), (7, 9), (33, 32)], ids=lambda s: "x".join(map(str, s)))
def test_tiny_inputs(hw, zoo, generator):
    """Inputs so small that the later stages run on 1x1 maps (every conv still has output >= 1)."""
    model, model64 = zoo("resnet18")
    x = torch.randn(2, 3, *hw, generator=generator)
    with torch.no_grad():
        y = fuse(model, backend="cpu")(x)
    assert_model_close(y, reference(model64, x))


def test_fused_structure(zoo):
    model, _ = zoo("resnet50")
    fused = fuse(model, backend="cpu")
    assert isinstance(fused, FusedResNet)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert n_convs == 53
    fused_convs = [m for m in fused.modules() if isinstance(m, FusedConvBNAct)]
    assert len(fused_convs) == n_convs, "every conv -> BN pair becomes one fused op"
    assert all(m.backend == "cpu" for m in fused_convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d)) for m in fused.modules())
    assert not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    assert all(m.scale.dtype == torch.float32 for m in fused_convs)


# --- a hand-written torchvision-style ResNet (skip path called `shortcut`) ---------------------


class ShortcutBlock(nn.Module):
    """The widely copied BasicBlock: the skip path is `shortcut`, an empty Sequential if unused."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class HandWrittenResNet(nn.Module):
    """BasicBlocks with layers [3, 4, 6, 3], often labelled "ResNet-50" (it is ResNet-34)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(ShortcutBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_hand_written_shortcut_resnet(generator):
    model = randomize_batchnorm_(HandWrittenResNet(), generator).eval()
    # It is ResNet-34's network, not ResNet-50's.
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in resnet_fused.resnet34(NUM_CLASSES).parameters())
    assert n_params != sum(p.numel() for p in resnet_fused.resnet50(NUM_CLASSES).parameters())
    fused = fuse(model, backend="cpu")
    assert sum(isinstance(m, FusedConvBNAct) for m in fused.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())
    x = torch.randn(2, 3, 45, 52, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert_model_close(y, ref)


# --- the source model is left alone ------------------------------------------------------------


def test_fuse_does_not_modify_source(generator):
    model = randomize_batchnorm_(resnet_fused.resnet18(num_classes=NUM_CLASSES), generator)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    fused = fuse(model, backend="cpu")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(modes.values())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # Running the fused model doesn't touch it either (no BN statistics updates).
    with torch.no_grad():
        fused(torch.randn(2, 3, 32, 32, generator=generator))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k




@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL],
                         ids=["contiguous", "channels_last"])
def test_fused_model_is_independent_of_source(memory_format, generator):
    """fuse() returns a new module: updating the source afterwards leaves it unchanged."""
    model = random_model("resnet18", generator).to(memory_format=memory_format)
    fused = fuse(model, backend="cpu")
    x = torch.randn(1, 3, 32, 32, generator=generator)
    with torch.no_grad():
        y0 = fused(x)
        for p in model.parameters():
            p.mul_(1.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.25)
        assert torch.equal(fused(x), y0)


# --- dtypes, memory formats, batch sizes -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_low_precision_fused_model(name, dtype, zoo, generator):
    model, _ = zoo(name)
    fused = fuse(model, backend="cpu", dtype=dtype)
    assert fused.fc.weight.dtype == dtype
    assert all(m.weight.dtype == dtype and m.scale.dtype == torch.float32
               for m in fused.modules() if isinstance(m, FusedConvBNAct))
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = model(x)  # the fp32 composition
    assert y.dtype == dtype
    assert_model_close(y, ref, dtype)
    assert model.conv1.weight.dtype == torch.float32, "the source model keeps its dtype"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_low_precision_source_model(dtype, zoo, generator):
    """A bf16/fp16 source model fuses in its own dtype (BN folded in fp32 from its params)."""
    model, _ = zoo("resnet18")
    low = copy.deepcopy(model).to(dtype)
    fused = fuse(low, backend="cpu")
    assert fused.dtype == dtype and fused.stem.weight.dtype == dtype
    assert fused.stem.scale.dtype == torch.float32
    x = torch.randn(2, 3, 48, 48, generator=generator)
    with torch.no_grad():
        y = fused(x)
        ref = copy.deepcopy(low).float()(x)  # fp32 composition of the same low-precision params
    assert y.dtype == dtype
    assert_model_close(y, ref, dtype)


def test_low_precision_weights_are_the_reference_weights(zoo):
    """BN stays in the epilogue: bf16 weights are exactly the source's weights cast to bf16."""
    model, _ = zoo("resnet18")
    fused = fuse(model, backend="cpu", dtype=torch.bfloat16)
    assert torch.equal(fused.stem.weight, model.conv1.weight.detach().to(torch.bfloat16))
    conv2 = fused.stages[1][0].convs[1]
    assert torch.equal(conv2.weight, model.layer2[0].conv2.weight.detach().to(torch.bfloat16))


def _input_views(x: torch.Tensor, generator) -> dict[str, torch.Tensor]:
    n, c, h, w = x.shape
    big = torch.randn(n, c + 2, h + 3, 2 * w, generator=generator)
    sliced = big[:, 1:1 + c, 2:2 + h, ::2]
    sliced.copy_(x)
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=CL),
        "sliced": sliced,
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "float64": x.double(),
    }


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "transposed",
                                    "float64"])
def test_any_input_memory_format(layout, zoo, generator):
    model, model64 = zoo("resnet18")
    fused = fuse(model, backend="cpu")
    x = torch.randn(2, 3, 37, 41, generator=generator)
    xv = _input_views(x, generator)[layout]
    assert torch.equal(xv.float(), x)
    with torch.no_grad():
        y = fused(xv)
    assert y.dtype == torch.float32
    assert_model_close(y, reference(model64, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("backend", ["cpu", "aten"])
def test_empty_batch(backend, dtype, zoo):
    model, _ = zoo("resnet18")
    fused = fuse(model, backend=backend, dtype=dtype)
    with torch.no_grad():
        y = fused(torch.randn(0, 3, 64, 64))
        f = fused.forward_features(torch.randn(0, 3, 64, 64))
    assert y.shape == (0, NUM_CLASSES) and y.dtype == dtype
    assert f.shape == (0, 512)


def test_batch_consistency(zoo, generator):
    """Each image's logits don't depend on the rest of the batch."""
    model, _ = zoo("resnet18")
    fused = fuse(model, backend="cpu")
    x = torch.randn(3, 3, 40, 40, generator=generator)
    with torch.no_grad():
        full = fused(x)
        single = torch.cat([fused(x[i:i + 1]) for i in range(3)])
    assert relative_error(full, single) <= tolerance(torch.float32, "op")


# --- models fuse() must refuse, naming the module --------------------------------------------


def _gelu_in_block(m):
    m.layer2[1].relu = nn.GELU()


def _grouped_conv(m):
    m.layer3[0].conv2 = nn.Conv2d(256, 256, 3, padding=1, groups=2, bias=False)


def _dilated_conv(m):
    m.layer4[1].conv1 = nn.Conv2d(512, 512, 3, padding=2, dilation=2, bias=False)


def _same_padding_conv(m):
    m.layer1[1].conv2 = nn.Conv2d(64, 64, 3, padding="same", bias=False)


def _reflect_padding_conv(m):
    m.layer1[0].conv1 = nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect", bias=False)


def _missing_layer3(m):
    del m.layer3


def _groupnorm(m):
    m.layer1[0].bn2 = nn.GroupNorm(8, 64)


def _no_running_stats(m):
    m.layer1[1].bn1 = nn.BatchNorm2d(64, track_running_stats=False)


def _long_skip(m):
    m.layer2[0].downsample.append(nn.ReLU())


def _missing_skip(m):
    m.layer2[0].downsample = None


def _stem_gelu(m):
    m.relu = nn.GELU()


def _layer_not_sequential(m):
    m.layer4 = nn.ModuleList(list(m.layer4))


def _missing_bn(m):
    del m.layer3[1].bn2


def _extra_module(m):
    m.layer1[0].se = nn.Conv2d(64, 64, 1)


UNCONVERTIBLE = {
    "gelu-in-block": (_gelu_in_block, "layer2.1.relu"),
    "groups2": (_grouped_conv, "layer3.0.conv2"),
    "dilation2": (_dilated_conv, "layer4.1.conv1"),
    "padding-same": (_same_padding_conv, "layer1.1.conv2"),
    "padding-reflect": (_reflect_padding_conv, "layer1.0.conv1"),
    "missing-layer3": (_missing_layer3, "layer3"),
    "groupnorm": (_groupnorm, "layer1.0"),
    "no-running-stats": (_no_running_stats, "layer1.1"),
    "skip-with-3-modules": (_long_skip, "layer2.0.downsample"),
    "identity-skip-with-stride": (_missing_skip, "layer2.0"),
    "stem-gelu": (_stem_gelu, "stem"),
    "layer-not-sequential": (_layer_not_sequential, "layer4"),
    "missing-bn": (_missing_bn, "layer3.1"),
    "extra-conv-in-block": (_extra_module, "layer1.0.se"),
}


@pytest.mark.parametrize("breaker", list(UNCONVERTIBLE), ids=list(UNCONVERTIBLE))
def test_unconvertible_model_names_the_module(breaker, zoo):
    model, _ = zoo("resnet18")
    model = copy.deepcopy(model)
    edit, path = UNCONVERTIBLE[breaker]
    edit(model)
    with pytest.raises((ValueError, TypeError), match=re.escape(path)):
        fuse(model, backend="cpu")


def test_fuse_bad_arguments(zoo):
    model, _ = zoo("resnet18")
    with pytest.raises(TypeError, match="model"):
        fuse("resnet18")
    with pytest.raises(TypeError, match="model"):
        fuse(model.state_dict())
    with pytest.raises(ValueError, match="backend"):
        fuse(model, backend="gpu")
    with pytest.raises(ValueError, match="dtype"):
        fuse(model, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype"):
        fuse(model, dtype=torch.int8)


# --- torchvision / timm models, when installed --------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_fuse_torchvision(name, generator):
    tv = import_or_skip("torchvision")
    model = randomize_batchnorm_(getattr(tv.models, name)(num_classes=NUM_CLASSES), generator)
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        y = fuse(model, backend="cpu")(x)
        ref = copy.deepcopy(model).double()(x.double())
    assert_model_close(y, ref)


def test_fuse_timm(generator):
    timm = import_or_skip("timm")
    model = timm.create_model("resnet50", pretrained=False, num_classes=NUM_CLASSES)
    model = randomize_batchnorm_(model, generator).eval()
    x = torch.randn(1, 3, 64, 64, generator=generator)
    fused = fuse(model, backend="cpu")
    with torch.no_grad():
        y = fused(x)
        f = fused.forward_features(x)
        model64 = copy.deepcopy(model).double()
        ref = model64(x.double())
        ref_f = model64.forward_head(model64.forward_features(x.double()), pre_logits=True)
    assert_model_close(y, ref)
    assert_model_close(f, ref_f)
