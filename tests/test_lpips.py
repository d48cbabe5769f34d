"""LPIPS from local weights (issue 19 item 1): the same numbers as torchmetrics' LPIPS code, refusals by name."""

import numpy as np
import pytest
import torch
from torch import nn

from analysis.metrics.lpips import LPIPS, alexnet_features, lpips


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A torchvision-style AlexNet state dict (`features.*` and a classifier entry) with random weights."""
    torch.manual_seed(0)
    features = alexnet_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4096, 9216)[:2]  # torchvision's file has these too: ignored
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(state, path)
    return str(path)


def _torchmetrics_lpips(ours: LPIPS):
    """torchmetrics' `_LPIPS.forward` (scaling, taps, normalisation, linear layers, spatial mean) around our
    backbone's modules: its constructor needs torchvision, which this project cannot install, so it is assembled
    here from its own parts."""
    from torchmetrics.functional.image.lpips import _LPIPS, NetLinLayer, ScalingLayer

    class Taps(nn.Module):
        def __init__(self, features):
            super().__init__()
            self.features = features

        def forward(self, x):
            out = []
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in (1, 4, 7, 9, 11):
                    out.append(x)
            return tuple(out)

    m = _LPIPS.__new__(_LPIPS)
    nn.Module.__init__(m)
    m.scaling_layer, m.net, m.L, m.resize, m.spatial = ScalingLayer(), Taps(ours.features), 5, None, False
    m.lins = nn.ModuleList(NetLinLayer(c) for c in (64, 192, 384, 256, 256))
    for mine, theirs in zip(ours.lins, m.lins):
        theirs.model[0].weight.data.copy_(mine.weight.data)
    return m.eval()


def test_lpips_matches_torchmetrics_code_and_its_shipped_linear_layers(backbone):
    ours = LPIPS(backbone)
    from importlib import resources

    with resources.as_file(
        resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / "alex.pth"
    ) as f:
        shipped = torch.load(f, map_location="cpu", weights_only=True)
    assert torch.equal(ours.lins[2].weight, shipped["lin2.model.1.weight"])
    theirs = _torchmetrics_lpips(ours)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 96, 80, generator=g) * 2 - 1, torch.rand(3, 3, 96, 80, generator=g) * 2 - 1
    with torch.no_grad():
        expected = theirs(a, b).flatten()
    torch.testing.assert_close(ours(a, b), expected, rtol=1e-5, atol=1e-7)
    assert expected.min() > 0


def test_lpips_zero_for_identical_grows_with_damage_symmetric_small_images(backbone):
    rng = np.random.default_rng(0)
    assert lpips(rng.random((16, 16, 3)), rng.random((16, 16, 3)), backbone) > 0  # upsampled to AlexNet's least size
    image = rng.random((32, 32, 3))
    assert lpips(image, image, backbone) == 0.0
    scores = [lpips(np.clip(image + rng.normal(0, s, image.shape), 0, 1), image, backbone) for s in (0.02, 0.1, 0.4)]
    assert scores[0] < scores[1] < scores[2], scores
    other = rng.random((32, 32, 3))
    assert lpips(image, other, backbone) == pytest.approx(lpips(other, image, backbone), rel=1e-5)


def test_lpips_of_a_clip_is_the_mean_over_its_frames(backbone):
    """Wan's frames: the clip's LPIPS is its frames' mean, computed a few frames per forward."""
    from analysis.metrics import lpips as module

    rng = np.random.default_rng(5)
    a, b = rng.random((module.FRAMES_PER_BATCH + 3, 32, 32, 3)), rng.random((module.FRAMES_PER_BATCH + 3, 32, 32, 3))
    per_frame = [lpips(x, y, backbone) for x, y in zip(a, b)]
    assert lpips(a, b, backbone) == pytest.approx(np.mean(per_frame), rel=1e-5)
    assert len(set(np.round(per_frame, 6))) > 1  # the frames differ: a mean of one frame would not pass
    assert lpips(a, a, backbone) == 0.0


def test_lpips_refuses_missing_or_wrong_weights_and_bad_images(tmp_path, backbone, monkeypatch):
    image = np.zeros((32, 32, 3))
    monkeypatch.delenv("FORA_LPIPS_ALEXNET", raising=False)
    with pytest.raises(ValueError, match="FORA_LPIPS_ALEXNET"):
        lpips(image, image)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        lpips(image, image, str(tmp_path / "absent.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, wrong)
    with pytest.raises(ValueError, match="not torchvision's AlexNet state dict: missing features.0.bias"):
        lpips(image, image, str(wrong))
    with pytest.raises(ValueError, match="differ in shape"):
        lpips(image, np.zeros((16, 16, 3)), backbone)
    with pytest.raises(ValueError, match=r"one HxWx3 image \(or FxHxWx3 clip\) per side"):
        lpips(np.zeros((32, 32)), np.zeros((32, 32)), backbone)
    with pytest.raises(ValueError, match=r"one HxWx3 image \(or FxHxWx3 clip\) per side"):
        lpips(np.zeros((1, 2, 32, 32, 3)), np.zeros((1, 2, 32, 32, 3)), backbone)
    shaped = tmp_path / "shaped.pth"
    state = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state, shaped)
    with pytest.raises(
        ValueError, match=r"features.3.weight has shape \(192, 64, 3, 3\), AlexNet's is \(192, 64, 5, 5\)"
    ):
        lpips(image, image, str(shaped))
    monkeypatch.setenv("FORA_LPIPS_ALEXNET", backbone)
    assert lpips(image, image) == 0.0


def test_a_comparison_carries_lpips_when_weights_are_given(backbone, monkeypatch):
    from analysis.metrics.quality import compare_images

    rng = np.random.default_rng(3)
    a, b = rng.random((32, 32, 3)), rng.random((32, 32, 3))
    monkeypatch.setenv("FORA_LPIPS_ALEXNET", backbone)
    assert compare_images(a, b, with_lpips=True)["lpips"] == pytest.approx(lpips(a, b, backbone))
    assert compare_images(a, b)["lpips"] is None  # the sweep's comparisons do not pay for it
    monkeypatch.setenv("FORA_LPIPS_ALEXNET", "/nonexistent/alexnet.pth")  # a bad setting never loses the comparison
    bad = compare_images(a, b, with_lpips=True)
    assert (
        bad["lpips"] is None
        and "FileNotFoundError" in bad["lpips_note"]
        and bad["psnr"] == compare_images(a, b)["psnr"]
    )
