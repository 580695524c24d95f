"""torchvision's published weights by name ("torchvision:IMAGENET1K_V2") and the shipped ImageNet
class names, without the network: the tests put a checkpoint they write themselves where torch's
hub cache keeps the published file, and stand in for a failed download."""

from __future__ import annotations

import csv
import sys
import urllib.error

import pytest
import torch
from infer_corpus import good_corpus, random_checkpoint

import resnet_fused
from resnet_fused import WeightsError, imagenet_classes
from resnet_fused.__main__ import main as cli_main
from resnet_fused.infer import CheckpointError, predict
from resnet_fused.pretrained import PUBLISHED, load_pretrained, resolve
from resnet_fused.testing.optional import try_import

TORCHVISION, WHY_NOT = try_import("torchvision.models")
# Each test runs through torchvision's loader where torchvision imports, and through the
# package's own download of the same file where it does not (or is hidden, as here).
LOADERS = ["own", pytest.param("torchvision", marks=pytest.mark.skipif(
    TORCHVISION is None, reason=f"torchvision does not import here ({WHY_NOT})"))]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache in tmp_path, and no network: any download fails as offline would."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(before)


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    if request.param == "own":
        monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails: the own path
    return request.param


def _published(hub, arch: str, name: str, seed: int) -> str:
    """A random 1000-class checkpoint where the hub cache keeps ``arch``'s ``name`` file."""
    hub.mkdir(parents=True, exist_ok=True)
    return random_checkpoint(str(hub / PUBLISHED[arch][name]), arch, num_classes=1000, seed=seed)


def test_the_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert names[:3] == ("tench", "goldfish", "great white shark") and names[-1] == "toilet tissue"
    assert all(name == name.strip() and name for name in names)


@pytest.mark.skipif(TORCHVISION is None, reason=f"torchvision does not import here ({WHY_NOT})")
def test_the_table_and_the_names_are_torchvisions():
    from torchvision.models import get_model_weights

    for arch, published in PUBLISHED.items():
        enum = get_model_weights(arch)
        assert {w.name for w in enum} == set(published)
        for name, filename in published.items():
            assert enum[name].url.endswith("/" + filename)
            assert tuple(enum[name].meta["categories"]) == imagenet_classes()
        assert resolve(arch, "torchvision:DEFAULT").name == enum.DEFAULT.name


def test_names_resolve_and_unknown_ones_list_the_choices():
    assert resolve("resnet50", "torchvision:DEFAULT").name == "IMAGENET1K_V2"
    assert resolve("resnet18", "torchvision:DEFAULT").name == "IMAGENET1K_V1"
    found = resolve("resnet50", "torchvision:ResNet50_Weights.IMAGENET1K_V1")
    assert found.url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    with pytest.raises(WeightsError, match=r"publishes torchvision:IMAGENET1K_V1, "
                                           r"torchvision:DEFAULT for resnet18"):
        resolve("resnet18", "torchvision:IMAGENET1K_V2")
    with pytest.raises(WeightsError, match="publishes"):
        resolve("resnet34", "torchvision:ResNet50_Weights.IMAGENET1K_V1")


def test_the_model_api_loads_the_cached_file(hub, loader, generator):
    path = _published(hub, "resnet18", "IMAGENET1K_V1", seed=3)
    named = resnet_fused.resnet18(weights="torchvision:IMAGENET1K_V1").eval()
    from_file = resnet_fused.resnet18(weights=path).eval()
    for key, value in from_file.state_dict().items():
        assert torch.equal(named.state_dict()[key], value), key
    state, names = load_pretrained("resnet18", "torchvision:DEFAULT")
    assert names == imagenet_classes() and state.keys() == from_file.state_dict().keys()
    x = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        assert torch.equal(named(x), from_file(x))


def test_offline_without_the_file_says_how_to_get_it(hub, loader):
    with pytest.raises(WeightsError) as e:
        resnet_fused.resnet50(weights="torchvision:IMAGENET1K_V2")
    text = str(e.value)
    assert "cannot download https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in text
    assert "URLError" in text and "Offline? Copy that file to " + str(hub) in text
    assert "torchvision.models.ResNet50_Weights.IMAGENET1K_V2.get_state_dict()" in text
    assert "\n" not in text


def test_a_damaged_cached_file_says_to_delete_it(hub, loader):
    hub.mkdir(parents=True)
    (hub / PUBLISHED["resnet34"]["IMAGENET1K_V1"]).write_bytes(b"half a download")
    with pytest.raises(WeightsError, match=r"resnet34-b627a593.pth does not load .*delete it"):
        resnet_fused.resnet34(weights="torchvision:IMAGENET1K_V1")


def test_predict_with_torchvision_weights_prints_imagenet_names(hub, loader, tmp_path):
    _published(hub, "resnet18", "IMAGENET1K_V1", seed=5)
    photos = good_corpus(str(tmp_path / "photos"), count=3)
    common = ["predict", *photos, "--weights", "torchvision:IMAGENET1K_V1", "--model", "resnet18",
              "--topk", "2", "--no-progress", "--device", "cpu", "--workers", "0"]
    assert cli_main([*common, "--out", str(tmp_path / "named.csv")]) == 0
    with open(tmp_path / "named.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class_1", "label_1", "prob_1", "class_2", "label_2", "prob_2"]
    names = imagenet_classes()
    for row in rows[1:]:
        assert row[2] == names[int(row[1])] and row[5] == names[int(row[4])]
    assert cli_main([*common, "--no-labels", "--out", str(tmp_path / "numbers.csv")]) == 0
    with open(tmp_path / "numbers.csv", newline="") as f:
        numbers = list(csv.reader(f))
    assert numbers[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [[r[0], r[1], r[3], r[4], r[6]] for r in rows[1:]] == numbers[1:]


def test_a_1000_class_checkpoint_file_gets_the_names_by_default(tmp_path):
    ckpt = random_checkpoint(str(tmp_path / "r18.pth"), "resnet18", num_classes=1000, seed=7)
    photos = good_corpus(str(tmp_path / "photos"), count=2)
    predict(photos, ckpt, tmp_path / "p.jsonl", model="resnet18", topk=1, progress=False,
            device="cpu", workers=0)
    text = (tmp_path / "p.jsonl").read_text()
    assert '"labels": ["' in text


def test_the_job_names_the_problem_in_one_line(hub, loader, tmp_path):
    photos = good_corpus(str(tmp_path / "photos"), count=1)
    with pytest.raises(CheckpointError, match=r"cannot download .*resnet18-f37072fd\.pth"):
        predict(photos, "torchvision:IMAGENET1K_V1", tmp_path / "p.csv", model="resnet18",
                progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="publishes torchvision:IMAGENET1K_V1"):
        predict(photos, "torchvision:IMAGENET1K_V3", tmp_path / "p.csv", model="resnet18",
                progress=False, device="cpu")
