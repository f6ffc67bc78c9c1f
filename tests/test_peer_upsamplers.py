"""The published peers of Table 1 (JAFAR, AnyUp, LoftUp, FeatUp) through their adapters, offline.

Each peer is replaced by a STAND-IN written into ``tmp_path``: a repository with the same layout, entry point
name and arguments, class name and ``forward`` signature as the real one at the commit named beside it. The
stand-ins record what they are given and return features computed from it, so the tests check that each
adapter loads the peer the way the peer documents (``torch.hub.load(..., source='local')``, or JAFAR's module
from a checkout plus its weights file) and calls it with the right tensors, in the right order, normalised as
the peer expects, and returns the requested size. Only the network is faked: where a test needs the GitHub
path, ``torch.hub.load`` is redirected to the stand-in after the adapter's arguments are recorded.
"""

from __future__ import annotations

import builtins
import inspect
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import uplift.upsamplers as ups
from tasks import BackboneConfig
from tasks.probes import FrozenFeatures
from uplift.backbones import OriginalDINOv2Backbone

TINY_VIT = BackboneConfig(pretrained=False, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=56))
IMAGENET = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# The commits whose signatures the stand-ins mirror (also each adapter's ``code`` attribute).
ANYUP_COMMIT = "351807a9c4287368732cc247f26c7c81c9139af4"  # wimmerth/anyup: hubconf.py, anyup/model.py
LOFTUP_COMMIT = "6620d9bcde4c1af5cddedde6b9aaed6d4174a799"  # andrehuang/loftup: hubconf.py, upsamplers/upsamplers.py
FEATUP_COMMIT = "6b5a6c0e91f75e69194807128dcbc39c3084a30d"  # mhamilton723/FeatUp: hubconf.py, featup/upsamplers.py
JAFAR_COMMIT = "94d4d5456ff3c719d111b9a26ead3813e089302b"  # PaulCouairon/JAFAR: src/upsampler/jafar.py, train_probes.py
DINOV2_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"  # facebookresearch/dinov2: hubconf.py, dinov2/hub/backbones.py


# ------------------------------------------------------------------------------------------ stand-ins

# Shared by the stand-ins: every call is recorded on the module, and the output is the bilinear
# upsampling of what the peer took as features, so a swapped argument shows in the values too.
RECORDER = '''
import torch
import torch.nn.functional as F
from torch import nn


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.scale = nn.Parameter(torch.ones(()))

    def record(self, image, features, size):
        assert image.shape[1] == 3, f"the image argument has {image.shape[1]} channels"
        self.calls.append({"image": image.clone(), "features": features.clone(), "size": tuple(size)})
        return self.scale * F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)
'''

HUBCONFS = {
    # wimmerth/anyup@351807a hubconf.py: def anyup(use_natten=False, pretrained: bool = True, device='cpu')
    # anyup/model.py: AnyUp.forward(self, image, features, output_size=None, vis_attn=False, q_chunk_size=None)
    "anyup": RECORDER + '''
dependencies = ["torch"]


class AnyUp(Recorder):
    def forward(self, image, features, output_size=None, vis_attn=False, q_chunk_size=None):
        output_size = output_size if output_size is not None else image.shape[-2:]
        return self.record(image, features, output_size)


def anyup(use_natten=False, pretrained: bool = True, device='cpu'):
    model = AnyUp().to(device)
    model.entry_kwargs = dict(use_natten=use_natten, pretrained=pretrained, device=device)
    return model
''',
    # andrehuang/loftup@6620d9b hubconf.py: def loftup_dinov2s(pretrained=True, progress=True, **kwargs)
    # upsamplers/upsamplers.py: UpsamplerwithChannelNorm.forward(self, lr_feats, img) -> features at img's size
    "loftup": RECORDER + '''
class UpsamplerwithChannelNorm(Recorder):
    def forward(self, lr_feats, img):
        return self.record(img, lr_feats, img.shape[-2:])


def loftup_dinov2s(pretrained=True, progress=True, **kwargs):
    model = UpsamplerwithChannelNorm()
    model.entry_kwargs = dict(pretrained=pretrained, progress=progress, **kwargs)
    return model
''',
    # mhamilton723/FeatUp@6b5a6c0 hubconf.py: def dinov2(pretrained=True, use_norm=True) -> UpsampledBackbone with
    # .model (featurizer, or Sequential(featurizer, ChannelNorm)) and .upsampler (JBUStack.forward(source, guidance), 16x)
    "featup": RECORDER + '''
dependencies = ["torch"]


class ChannelNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-4)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class JBUStack(Recorder):
    def forward(self, source, guidance):
        _, _, h, w = source.shape
        return self.record(guidance, source, (16 * h, 16 * w))


class UpsampledBackbone(nn.Module):
    def __init__(self, use_norm):
        super().__init__()
        featurizer = nn.Conv2d(3, 384, 14, 14)  # stands for DINOv2: parameters the row must not count
        self.model = nn.Sequential(featurizer, ChannelNorm(384)) if use_norm else featurizer
        self.upsampler = JBUStack()

    def forward(self, image):
        return self.upsampler(self.model(image), image)


def dinov2(pretrained=True, use_norm=True):
    model = UpsampledBackbone(use_norm)
    model.entry_kwargs = dict(pretrained=pretrained, use_norm=use_norm)
    return model
''',
    # facebookresearch/dinov2@b8931f7 hubconf.py -> dinov2/hub/backbones.py:
    # def dinov2_vits14(*, pretrained: bool = True, weights = Weights.LVD142M, **kwargs) -> DinoVisionTransformer whose
    # forward_features(x, masks=None) returns x_norm_clstoken [B, C], x_norm_regtokens, x_norm_patchtokens [B, N, C]
    "dinov2": '''
import torch
from torch import nn

dependencies = ["torch"]


class DinoVisionTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_size, self.num_features = 14, 384
        self.embed_dim = self.num_features
        self.patch_embed = nn.Conv2d(3, 384, 14, 14)
        self.inputs = []

    def forward_features(self, x, masks=None):
        self.inputs.append(x.clone())
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return {"x_norm_clstoken": tokens.mean(1), "x_norm_regtokens": tokens[:, :0],
                "x_norm_patchtokens": tokens, "x_prenorm": tokens}


def dinov2_vits14(*, pretrained: bool = True, weights="LVD142M", **kwargs):
    model = DinoVisionTransformer()
    model.entry_kwargs = dict(pretrained=pretrained, weights=weights, **kwargs)
    return model
''',
}


def stand_in(root: Path, name: str) -> Path:
    """A stand-in repository ``root/name`` with its ``hubconf.py``."""
    repo = root / name
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "hubconf.py").write_text(HUBCONFS[name])
    return repo


def jafar_checkout(root: Path) -> Path:
    """A stand-in checkout of PaulCouairon/JAFAR@94d4d54: ``src/upsampler/{__init__,jafar}.py`` (``src`` has no
    ``__init__.py``, as there) and ``utils/img.py``; ``JAFAR.__init__`` and ``forward`` have the real signatures."""
    repo = root / "JAFAR"
    (repo / "src" / "upsampler").mkdir(parents=True)
    (repo / "utils").mkdir()
    (repo / "utils" / "img.py").write_text("def create_coordinate(h, w, start=0, end=1, device='cpu', dtype=None):\n"
                                           "    return None\n")
    (repo / "src" / "upsampler" / "__init__.py").write_text("from .jafar import JAFAR\n")
    (repo / "src" / "upsampler" / "jafar.py").write_text(RECORDER + textwrap.dedent('''
        from utils.img import create_coordinate


        class JAFAR(Recorder):
            def __init__(self, input_dim=3, qk_dim=128, v_dim=384, feature_dim=None, kernel_size=1, num_heads=4, **kwargs):
                super().__init__()
                self.config = dict(input_dim=input_dim, qk_dim=qk_dim, v_dim=v_dim, feature_dim=feature_dim,
                                   kernel_size=kernel_size, num_heads=num_heads)
                self.image_encoder = nn.Conv2d(input_dim, qk_dim, kernel_size, bias=False)
                self.key_features_encoder = nn.Conv2d(v_dim, qk_dim, 1, bias=False)

            def forward(self, image, features, output_size):
                return self.record(image, features, output_size)
        '''))
    return repo


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path):
    """torch.hub's cache and trusted list in ``tmp_path``; the stand-ins' modules forgotten afterwards."""
    hub_dir, before = torch.hub.get_dir(), set(sys.modules)
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(hub_dir)
    for name in set(sys.modules) - before:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or getattr(sys.modules[name], "__path__", "")):
            del sys.modules[name]


@pytest.fixture
def hub_spy(tmp_path: Path, monkeypatch):
    """``torch.hub.load`` for GitHub repositories, with the download replaced by the stand-in: records the
    adapter's arguments, then loads the stand-in named after the repository through the real torch.hub."""
    real, calls = torch.hub.load, []
    names = {"wimmerth/anyup": "anyup", "andrehuang/loftup": "loftup", "mhamilton723/FeatUp": "featup",
             "facebookresearch/dinov2": "dinov2"}

    def load(repo, entry, *args, **kwargs):
        calls.append({"repo": repo, "entry": entry, **kwargs})
        if kwargs.pop("source", "github") == "local":
            return real(repo, entry, *args, source="local", **kwargs)
        kwargs.pop("trust_repo", None)
        return real(str(stand_in(tmp_path / "github", names[repo])), entry, *args, source="local", **kwargs)

    monkeypatch.setattr(torch.hub, "load", load)
    return calls


def normalised(image01: torch.Tensor) -> torch.Tensor:
    return (image01 - IMAGENET[0]) / IMAGENET[1]


# ------------------------------------------------------------------------------------------ AnyUp


def test_anyup_is_called_with_image_features_and_output_size(tmp_path: Path) -> None:
    row = ups.AnyUp(repo=str(stand_in(tmp_path, "anyup")), source="local")
    image, feats = torch.randn(2, 3, 56, 56), torch.randn(2, 8, 4, 4)
    out = row(image, feats, (56, 42))
    (call,) = row.model.calls
    assert torch.equal(call["image"], image) and torch.equal(call["features"], feats) and call["size"] == (56, 42)
    assert out.shape == (2, 8, 56, 42)
    torch.testing.assert_close(out, F.interpolate(feats, size=(56, 42), mode="bilinear"))
    assert row.model.entry_kwargs == dict(use_natten=False, pretrained=True, device="cpu")  # the paper's model
    assert row.code.endswith(ANYUP_COMMIT) and row.num_parameters() == 1


# ------------------------------------------------------------------------------------------ FeatUp


@pytest.mark.parametrize("use_norm", [False, True])
def test_featup_keeps_the_jbu_stack_and_resizes_its_16x_output(tmp_path: Path, use_norm: bool) -> None:
    row = ups.FeatUpJBU(use_norm=use_norm, repo=str(stand_in(tmp_path, "featup")), source="local")
    image, feats = torch.randn(1, 3, 56, 56), torch.randn(1, 384, 4, 4)
    out = row(image, feats, (56, 56))
    (call,) = row.model.calls
    fed = row.norm(feats) if use_norm else feats
    assert torch.equal(call["features"], fed) and torch.equal(call["image"], image) and call["size"] == (64, 64)
    assert out.shape == (1, 384, 56, 56)  # 16x = 64, then down to the requested 56 (as 512 -> 448)
    expected = F.interpolate(F.interpolate(fed, size=(64, 64), mode="bilinear"), size=(56, 56), mode="bilinear",
                             antialias=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(call["features"], feats) != use_norm  # use_norm: the entry's ChannelNorm first
    # the entry's backbone is not kept: only the JBU stack (and the norm) count as the row's parameters
    assert row.num_parameters() == 1 + (2 * 384 if use_norm else 0)
    assert row.code.endswith(FEATUP_COMMIT)


# ------------------------------------------------------------------------------------------ LoftUp


def test_loftup_gets_features_then_the_image_at_the_output_size(tmp_path: Path) -> None:
    row = ups.LoftUp(backbone="task", repo=str(stand_in(tmp_path, "loftup")), source="local")
    assert row.own_backbone() is None and row.label == "LoftUp (task backbone)"
    image, feats = torch.randn(1, 3, 56, 56), torch.randn(1, 384, 4, 4)
    out = row(image, feats, (56, 56))
    out_small = row(image, feats, (28, 28))
    first, second = row.model.calls
    assert torch.equal(first["features"], feats) and torch.equal(first["image"], image) and out.shape == (1, 384, 56, 56)
    # another output size: LoftUp upsamples to its guidance image's size, so the image is resized to it
    torch.testing.assert_close(second["image"], F.interpolate(image, size=(28, 28), mode="bilinear", antialias=True))
    assert out_small.shape == (1, 384, 28, 28)
    assert row.model.entry_kwargs == dict(pretrained=True, progress=True) and row.code.endswith(LOFTUP_COMMIT)


def test_loftup_brings_the_original_dinov2_and_the_probe_features_come_from_it(tmp_path: Path) -> None:
    row = ups.LoftUp(repo=str(stand_in(tmp_path, "loftup")), source="local",
                     backbone_repo=str(stand_in(tmp_path, "dinov2")), backbone_source="local")
    own = row.own_backbone()
    assert isinstance(own, OriginalDINOv2Backbone) and own.model.entry_kwargs == dict(pretrained=True, weights="LVD142M")
    assert row.num_parameters() == 1  # the backbone it brings is not the upsampler's
    # the configured backbone would need the (offline) hub: it is never built when the row brings its own
    frozen = FrozenFeatures(BackboneConfig(pretrained=True), row, feature_size=28)
    assert frozen.backbone is own
    image01 = torch.rand(2, 3, 28, 28)
    dense, cls = frozen(image01, return_cls=True)
    (fed,) = own.model.inputs
    torch.testing.assert_close(fed, normalised(image01))  # the original's ImageNet normalisation
    tokens = own.model.patch_embed(fed)  # [2, 384, 2, 2]: the original's patch tokens as a grid
    (call,) = row.model.calls
    torch.testing.assert_close(call["features"], tokens)
    torch.testing.assert_close(call["image"], normalised(image01))
    torch.testing.assert_close(cls, tokens.flatten(2).mean(-1))
    assert dense.shape == (2, 384, 28, 28)


# ------------------------------------------------------------------------------------------ JAFAR


def jafar_weights(path: Path, checkout: Path, v_dim: int = 384, **extra) -> Path:
    """A checkpoint shaped like the release: the state dict under "jafar", plus an unused tensor (issue #1)."""
    sys.path.insert(0, str(checkout))
    try:
        from src.upsampler import JAFAR as StandIn

        state = StandIn(v_dim=v_dim).state_dict()
    finally:
        sys.path.remove(str(checkout))
    torch.save({"jafar": {**state, "query_features_encoder.0.weight": torch.zeros(1)}, **extra}, path)
    return path


def test_jafar_from_a_local_checkout_and_its_weights(tmp_path: Path) -> None:
    checkout = jafar_checkout(tmp_path)
    weights = jafar_weights(tmp_path / "jafar.pth", checkout)
    row = ups.JAFAR(repo=str(checkout), weights=str(weights))
    assert row.model.config == dict(input_dim=3, qk_dim=128, v_dim=384, feature_dim=384, kernel_size=1, num_heads=4)
    saved = torch.load(weights, weights_only=True)["jafar"]
    assert all(torch.equal(v, saved[k]) for k, v in row.model.state_dict().items())
    image, feats = torch.randn(1, 3, 56, 56), torch.randn(1, 384, 4, 4)
    out = row(image, feats, (56, 56))
    (call,) = row.model.calls
    assert torch.equal(call["image"], image) and torch.equal(call["features"], feats) and call["size"] == (56, 56)
    assert out.shape == (1, 384, 56, 56) and row.code.endswith(JAFAR_COMMIT)


def test_jafar_release_url_is_downloaded_once_into_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    checkout = jafar_checkout(tmp_path)
    release = jafar_weights(tmp_path / "release.pth", checkout)
    downloads = []

    def download(url, dst, *args, **kwargs):  # the one network call
        downloads.append(url)
        Path(dst).write_bytes(release.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    ups.JAFAR(repo=str(checkout))
    ups.JAFAR(repo=str(checkout))
    assert downloads == [ups.JAFAR_DINOV2_S14]
    assert (tmp_path / "hub" / "checkpoints" / "jafar" / "vit_small_patch14_dinov2.lvd142m.pth").is_file()


class TrainingConfig:  # stands for the Hydra config JAFAR's training script pickles into its checkpoints
    pass


def test_jafar_weights_refusals_name_the_way_out(tmp_path: Path, monkeypatch) -> None:
    checkout = jafar_checkout(tmp_path)
    with pytest.raises(ups.UpsamplerUnavailableError, match=r"clone https://github.com/PaulCouairon/JAFAR.*`repo: "):
        ups.JAFAR()
    with pytest.raises(ups.UpsamplerUnavailableError, match="not a checkout"):
        ups.JAFAR(repo=str(tmp_path))
    with pytest.raises(ups.UpsamplerUnavailableError, match="not found"):
        ups.JAFAR(repo=str(checkout), weights=str(tmp_path / "missing.pth"))
    pickled = jafar_weights(tmp_path / "pickled.pth", checkout, cfg=TrainingConfig())
    with pytest.raises(ups.UpsamplerUnavailableError, match=r"more than tensors(.|\n)*weights_only=False.*\['jafar'\]"):
        ups.JAFAR(repo=str(checkout), weights=str(pickled))
    with pytest.raises(ValueError, match="feature_channels: 384"):
        ups.JAFAR(repo=str(checkout), weights=str(jafar_weights(tmp_path / "b.pth", checkout, v_dim=768)))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ups.UpsamplerUnavailableError, match=r"could not be downloaded(.|\n)*`weights: /path/to/file`"):
        ups.JAFAR(repo=str(checkout))


def test_jafar_weights_as_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    checkout = jafar_checkout(tmp_path)
    state = torch.load(jafar_weights(tmp_path / "j.pth", checkout), weights_only=True)["jafar"]
    save_file(state, tmp_path / "jafar.safetensors")
    row = ups.JAFAR(repo=str(checkout), weights=str(tmp_path / "jafar.safetensors"))
    assert torch.equal(row.model.key_features_encoder.weight, state["key_features_encoder.weight"])


# ------------------------------------------------------------------------------------------ trust and sources


@pytest.mark.parametrize("trust", [False, True])
def test_trust_repo_is_passed_only_when_the_row_opts_in(hub_spy, trust: bool) -> None:
    ups.AnyUp(trust_repo=trust)
    ups.LoftUp(trust_repo=trust)  # its own hub load and the original DINOv2's
    ups.FeatUpJBU(trust_repo=trust)
    assert [(c["repo"], c["entry"]) for c in hub_spy] == [
        ("wimmerth/anyup", "anyup"), ("andrehuang/loftup", "loftup_dinov2s"),
        ("facebookresearch/dinov2", "dinov2_vits14"), ("mhamilton723/FeatUp", "dinov2")]
    assert all(c["source"] == "github" and c["trust_repo"] == (True if trust else "check") for c in hub_spy)


def test_a_local_checkout_needs_no_trust_option(hub_spy, tmp_path: Path) -> None:
    ups.AnyUp(repo=str(stand_in(tmp_path, "anyup")), source="local")
    assert hub_spy[0]["source"] == "local" and "trust_repo" not in hub_spy[0]
    with pytest.raises(ups.UpsamplerUnavailableError, match="not a checkout with a hubconf.py"):
        ups.AnyUp(repo=str(tmp_path / "nowhere"), source="local")
    with pytest.raises(ValueError, match="source must be"):
        ups.AnyUp(source="gitlab")


@pytest.mark.parametrize("cls", [ups.AnyUp, ups.LoftUp, ups.FeatUpJBU])
def test_an_untrusted_repository_is_refused_with_the_option_named(cls, monkeypatch) -> None:
    """The real torch.hub.load: it asks whether to trust the repository (answered "no" here) before any download."""
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "n")
    with pytest.raises(ups.UpsamplerUnavailableError) as info:
        cls(repo=f"{inspect.signature(cls).parameters['repo'].default}:main")  # a ref: no network before it asks
    first = str(info.value).splitlines()[0]
    assert "Untrusted repository" in first and "`trust_repo: true`" in first and asked
    assert "source: local" in str(info.value)


@pytest.mark.parametrize("cls", [ups.JAFAR, ups.AnyUp, ups.LoftUp, ups.FeatUpJBU])
def test_peer_rows_offline_say_they_are_unavailable_and_how_to_fix_it(cls) -> None:
    with pytest.raises(ups.UpsamplerUnavailableError) as info:
        cls()
    message = str(info.value)
    if cls is ups.JAFAR:
        assert "`repo: /path/to/JAFAR`" in message
    else:  # offline, torch.hub cannot even resolve the default branch
        assert "torch.hub.load" in message and "`trust_repo: true`" in message and "network access once" in message


def test_peers_check_the_backbone_they_are_given(tmp_path: Path) -> None:
    loftup = ups.LoftUp(backbone="task", repo=str(stand_in(tmp_path, "loftup")), source="local")
    with pytest.raises(ValueError, match="384-channel features, the backbone gives 32"):
        FrozenFeatures(TINY_VIT, loftup, feature_size=56)
    anyup = ups.AnyUp(repo=str(stand_in(tmp_path, "anyup")), source="local")
    frozen = FrozenFeatures(TINY_VIT, anyup, feature_size=56)  # AnyUp takes any channels
    image01 = torch.rand(1, 3, 56, 56)
    frozen(image01)
    torch.testing.assert_close(anyup.model.calls[0]["image"], normalised(image01))  # DINOv2's ImageNet mean/std
    half = BackboneConfig(pretrained=False, model_kwargs=dict(
        TINY_VIT.model_kwargs, pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))))
    with pytest.raises(ValueError, match="ImageNet mean"):
        FrozenFeatures(half, anyup, feature_size=56)
