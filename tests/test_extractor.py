"""The front door: `uplift.FeatureExtractor`, `dense_features`, `pca_image`, and `hubconf.py` through `torch.hub`.

Offline and fast: tiny random timm ViTs (DINOv2's /14 and DINOv3's /16 classes at toy width) and tiny UPLiFT models,
on real photos (scikit-image's, and ../shared/data/photos/ when it is there). Hub downloads are replaced at the one
download call (``uplift.hub.hf_hub_download``; timm's ``hf_hub_download`` for the backbone).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

import uplift
import uplift.hub
from tests.conftest import REPO, SHARED
from tests.helpers import tiny_config, tiny_vae_config
from uplift import (RELEASES, ConfigError, FeatureExtractor, Features, InputError, UPLiFT, UPLiFTConfig,
                    dense_features, pca_image)
from uplift.backbones import BackboneConfig, TimmViTBackbone, VAEBackbone
from uplift.extractor import RAW, plan_size

DINOV2 = "vit_small_patch14_dinov2.lvd142m"
DINOV3 = "vit_small_plus_patch16_dinov3.lvd1689m"
TINY_KWARGS = {DINOV2: dict(embed_dim=32, depth=1, num_heads=2, img_size=56),
               DINOV3: dict(embed_dim=32, depth=1, num_heads=2, img_size=64)}
PATCH = {DINOV2: 14, DINOV3: 16}
TINY_VAE = dict(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8, latent_channels=4,
                sample_size=32)


def _tiny_backbone(name: str = DINOV2) -> BackboneConfig:
    return BackboneConfig(name=name, pretrained=False, model_kwargs=TINY_KWARGS[name])


@pytest.fixture(scope="module")
def parts() -> dict[str, tuple[TimmViTBackbone, UPLiFT]]:
    """A tiny backbone and UPLiFT per patch size (14 and 16)."""
    torch.manual_seed(0)
    return {name: (_tiny_backbone(name).build(), UPLiFT(tiny_config(PATCH[name], channels=32)).eval())
            for name in (DINOV2, DINOV3)}


def _extractor(parts, name=DINOV2, **kwargs) -> FeatureExtractor:
    backbone, model = parts[name]
    return FeatureExtractor(model, backbone, device="cpu", **kwargs)


def _photo(height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    """A crop of scikit-image's astronaut (a real 512x512 photo), uint8 HxWx3."""
    return skdata.astronaut()[top:top + height, left:left + width]


def _manual(backbone, model, image01: torch.Tensor, output_size) -> torch.Tensor:
    """The README's hand-assembled path: backbone, normalised guide, UPLiFT with output_size."""
    with torch.no_grad():
        return model(backbone.normalize(image01), backbone(image01), output_size=output_size)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255).contiguous()


# ---------------------------------------------------------------- equality with the manual path


@pytest.mark.parametrize("name", [DINOV2, DINOV3])
def test_features_equal_the_manual_backbone_plus_upsampler_path(parts, name) -> None:
    backbone, model = parts[name]
    p = PATCH[name]
    image = _tensor(_photo(3 * p, 5 * p, 100, 200))  # sides multiples of p: no resizing anywhere
    result = _extractor(parts, name).extract(image)
    assert torch.equal(result.features, _manual(backbone, model, image[None], (3 * p, 5 * p))[0])
    grid, cls = backbone(image[None], return_cls=True)
    assert torch.equal(result.low_res, grid[0]) and torch.equal(result.cls, cls[0])
    assert result.features.shape == (32, 3 * p, 5 * p) and result.image_size == result.work_size == (3 * p, 5 * p)
    # the plain function of the predict path gives the same
    assert torch.equal(dense_features(image, backbone, model).features, result.features)


def test_pil_path_array_and_tensor_inputs_give_the_same_features(parts, tmp_path: Path) -> None:
    array = _photo(42, 56, 150, 150)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    extractor = _extractor(parts)
    outputs = extractor([path, str(path), Image.fromarray(array), array, _tensor(array), _tensor(array)[None]])
    assert [tuple(o.shape) for o in outputs] == [(32, 42, 56)] * 5 + [(1, 32, 42, 56)]
    for other in outputs[1:]:
        assert torch.equal(other.reshape(outputs[0].shape), outputs[0])


# ---------------------------------------------------------------- sizes and policies


@pytest.mark.parametrize("name", [DINOV2, DINOV3])
@pytest.mark.parametrize("policy", ["resize", "pad"])
def test_odd_sizes_come_back_at_the_images_own_size(parts, name, policy) -> None:
    p = PATCH[name]
    extractor = _extractor(parts, name, policy=policy)
    for height, width in [(61, 83), (p + 1, 3 * p - 1), (97, 35)]:
        result = extractor.extract(_photo(height, width, 50, 120))
        assert result.features.shape == (32, height, width)
        h, w = result.work_size
        assert h % p == 0 and w % p == 0 and result.low_res.shape == (32, h // p, w // p)
        if policy == "pad":  # padding only grows the image, by less than a patch
            assert 0 <= h - height < p and 0 <= w - width < p
        else:  # the release's auto_resize: the nearest multiple (Python's round)
            assert (h, w) == (round(height / p) * p, round(width / p) * p)


def test_error_policy_refuses_sides_that_are_not_multiples(parts) -> None:
    extractor = _extractor(parts, policy="error")
    assert extractor(_photo(28, 42)).shape == (32, 28, 42)
    with pytest.raises(InputError, match=r"image is 29x42 pixels \(HxW\), not a multiple of the patch size 14.*"
                                         r"policy 'resize' or 'pad'"):
        extractor(_photo(29, 42))


def test_pad_policy_pads_edges_and_crops_the_padding_off(parts) -> None:
    """Pad: edge pixels repeated, split between both sides; the features of the padded image, mapped onto it,
    then cut back to the image's pixels."""
    backbone, model = parts[DINOV2]
    image = _tensor(_photo(37, 45, 200, 100))[None]  # pads 5 rows (2 top, 3 bottom) and 11 columns (5 left, 6 right)
    assert plan_size(37, 45, 14, "pad").pad == (5, 6, 2, 3)
    padded = torch.nn.functional.pad(image, (5, 6, 2, 3), mode="replicate")
    expected = _manual(backbone, model, padded, (42, 56))[..., 2:39, 5:50]
    assert torch.equal(_extractor(parts, policy="pad")(image), expected)


def test_resize_policy_is_the_releases_auto_resize_for_pil_images(parts) -> None:
    """PIL images are resized by PIL's bilinear filter to round(side / p) * p, as the release's extractor does,
    and the features are resized back to the image's own size."""
    backbone, model = parts[DINOV2]
    array = _photo(47, 61, 10, 300)
    expected_input = Image.fromarray(array).resize((56, 42), resample=Image.BILINEAR)  # round(61/14)=4, round(47/14)=3
    expected = _manual(backbone, model, _tensor(np.asarray(expected_input))[None], (47, 61))[0]
    assert torch.equal(_extractor(parts)(Image.fromarray(array)), expected)
    # Python's round, half to even, as the release: 21 px = 1.5 patches -> 2; 35 px = 2.5 patches -> 2
    assert plan_size(21, 35, 14).resize == (28, 28)


def test_output_size_raw_steps_and_every_step(parts) -> None:
    extractor = _extractor(parts, DINOV3)
    photo = _photo(50, 70, 30, 30)
    assert extractor(photo, output_size=(20, 30)).shape == (32, 20, 30)
    assert extractor(photo, output_size=25).shape == (32, 25, 35)  # an int is the short side, aspect kept
    assert extractor(photo, output_size=RAW).shape == (32, 48, 64)  # 3x4 tokens x 2^4
    assert extractor(photo, output_size=RAW, steps=2).shape == (32, 12, 16)
    assert extractor(photo, steps=2).shape == (32, 50, 70)
    result = extractor.extract(photo, return_steps=True)
    assert [tuple(s.shape) for s in result.steps] == [(32, 3 * 2 ** k, 4 * 2 ** k) for k in range(1, 5)]
    for bad in (0, "full", (10,), (10, 0), 2.5):
        with pytest.raises(InputError, match="output_size"):
            extractor(photo, output_size=bad)


def test_an_image_smaller_than_a_patch_is_refused_by_name(parts, tmp_path: Path) -> None:
    path = tmp_path / "thumb.png"
    Image.fromarray(_photo(10, 40)).save(path)
    with pytest.raises(InputError, match=r"thumb.png is 10x40 pixels \(HxW\), smaller than one 14x14 patch"):
        _extractor(parts)(path)
    with pytest.raises(InputError, match="smaller than one 14x14 patch"):
        _extractor(parts, policy="pad")(torch.rand(3, 40, 13))


def test_extreme_strips_are_bounded_by_max_pixels(parts, caplog) -> None:
    """A 10000x100 strip is 1 MP: under the default bound it is processed at about its own size (not resized to
    a 448 short side, i.e. 44800x448); a strip of more pixels is scaled down to the bound, aspect kept."""
    assert plan_size(100, 10000, 14).work == (98, 9996)
    plan = plan_size(200, 20000, 14)  # 4 MP
    h, w = plan.target
    assert plan.bounded and h * w <= 1024 * 1024 and abs(w / h - 100) < 1
    assert plan.work[0] * plan.work[1] <= 1024 * 1024 + 14 * (plan.work[0] + plan.work[1])
    # the same rule, computed, at a size this CPU runs in a moment: a 60x6000 strip, 4x over a 90000-pixel bound
    strip = np.tile(_photo(60, 500, 200, 0), (1, 12, 1))
    extractor = _extractor(parts, max_pixels=90_000)
    with caplog.at_level(logging.WARNING, logger="uplift.extractor"):
        result = extractor.extract(strip)
        extractor.extract(strip)
    assert result.image_size == (60, 6000) and result.features.shape == (32, 30, 3000)
    assert result.work_size[0] * result.work_size[1] <= 90_000 + 14 * sum(result.work_size)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "more than max_pixels=90000: it is processed at 30x3000" in warnings[0]
    assert extractor(strip, output_size=(60, 6000)).shape == (32, 60, 6000)  # any size on request
    with pytest.raises(InputError, match="short side would be 3 px, less than one 14-px patch"):
        plan_size(14, 100_000, 14, max_pixels=100_000)
    with pytest.raises(InputError, match="more than max_pixels=90000; with policy 'error'"):
        _extractor(parts, max_pixels=90_000, policy="error")(strip)


# ---------------------------------------------------------------- batches, lists, dtypes, devices


def test_batches_and_lists_of_different_sizes(parts) -> None:
    extractor = _extractor(parts)
    a, b = _tensor(_photo(42, 56, 0, 0)), _tensor(_photo(42, 56, 200, 200))
    batch = extractor(torch.stack([a, b]))
    assert batch.shape == (2, 32, 42, 56)
    torch.testing.assert_close(batch[1], extractor(b), rtol=1e-5, atol=1e-5)  # a batch is its images
    outputs = extractor([a, _photo(33, 71), Image.fromarray(_photo(90, 20))])
    assert [tuple(o.shape) for o in outputs] == [(32, 42, 56), (32, 33, 71), (32, 90, 20)]
    results = extractor.extract([a, b])
    assert isinstance(results, list) and all(isinstance(r, Features) for r in results)


def test_dtype_and_device(parts) -> None:
    default = _extractor(parts)
    photo = _photo(42, 56, 100, 100)
    reference = default(photo)
    assert reference.dtype == torch.float32 and reference.device.type == "cpu"
    backbone, model = parts[DINOV2]
    automatic = FeatureExtractor(model, backbone)  # CUDA when there is one
    assert automatic.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    automatic.to("cpu")
    low = _extractor(parts, dtype=torch.bfloat16).extract(photo)
    assert low.features.dtype == low.low_res.dtype == low.cls.dtype == torch.bfloat16
    relative = (low.features.float() - reference).norm() / reference.norm()
    assert relative < 0.05, relative  # autocast: same features to bfloat16's precision
    with pytest.raises(ConfigError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
        _extractor(parts, dtype=torch.float64)
    with pytest.raises(ConfigError, match="Unknown size policy 'crop'"):
        _extractor(parts, policy="crop")
    with pytest.raises(ConfigError, match="tile must be None or a positive number"):
        _extractor(parts, tile=0)


def test_fast_and_tiles_give_the_same_features(parts) -> None:
    photo = _photo(70, 98)
    reference = _extractor(parts).extract(photo).features
    for kwargs in ({"fast": True}, {"tile": 2}, {"fast": True, "tile": 3}):
        features = _extractor(parts, **kwargs).extract(photo).features
        assert features.shape == reference.shape
        assert float((features - reference).norm() / reference.norm()) <= 1e-5, kwargs


def test_bad_inputs_are_one_clear_error(parts) -> None:
    extractor = _extractor(parts)
    with pytest.raises(InputError, match=r"values in \[.*, 255\].*divide a 0-255 image by 255"):
        extractor(torch.rand(3, 28, 28) * 255)
    with pytest.raises(InputError, match="drop the alpha channel"):
        extractor(torch.rand(1, 4, 28, 28))
    with pytest.raises(InputError, match="NaN or infinite"):
        extractor(torch.full((3, 28, 28), float("nan")))
    with pytest.raises(InputError, match="expected a path, a PIL image"):
        extractor(42)
    with pytest.raises(InputError, match="Cannot read image .*corrupt.jpg"):
        extractor(REPO / "tests/data/unsplash/photos/corrupt.jpg")
    gray = extractor(torch.rand(1, 28, 42))  # one channel: grayscale, repeated
    assert gray.shape == (32, 28, 42)
    assert extractor(torch.randint(0, 256, (3, 28, 42), dtype=torch.uint8)).shape == (32, 28, 42)


def test_real_photos_from_shared(parts) -> None:
    folder = SHARED / "data" / "photos" / "uplift"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: the shared photos live in ../shared/ beside the repository")
    photo = sorted(folder.glob("*.png"))[0]
    with Image.open(photo) as image:
        width, height = image.size
    result = _extractor(parts, DINOV3).extract(photo)
    assert result.features.shape == (32, height, width) and torch.isfinite(result.features).all()
    picture = pca_image(result)
    assert picture.size == (width, height) and picture.mode == "RGB"


# ---------------------------------------------------------------- building from weights references


def test_from_a_fit_checkpoint_with_its_own_backbone(tmp_path: Path) -> None:
    """A `uplift fit` checkpoint records its backbone (and holds a random-init backbone's weights): the extractor
    rebuilds exactly the task's modules and gives the task's features."""
    from tasks import PredictiveTask

    torch.manual_seed(0)
    task = PredictiveTask(backbone=_tiny_backbone(DINOV3), uplift=tiny_config(16, channels=32)).eval()
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    extractor = FeatureExtractor(tmp_path / "last.ckpt", device="cpu")
    image = _tensor(_photo(48, 64, 100, 100))
    assert torch.equal(extractor(image), _manual(task.backbone, task.model, image[None], (48, 64))[0])
    assert asdict(task.backbone_config)["name"] == extractor.backbone.name == DINOV3


def test_released_names_and_files_bring_their_backbone(tmp_path: Path, monkeypatch) -> None:
    """`dinov2-s14` downloads the release (the one download call replaced) and builds its DINOv2 backbone; the
    release's file, by its hub name, brings its backbone too; anything else must name one."""
    from tests.test_checkpoints import _not_on_hub

    torch.manual_seed(0)
    weights = tmp_path / "uplift_dinov3-splus16.safetensors"
    save_file({k: v.contiguous() for k, v in UPLiFT(UPLiFTConfig.preset("dinov2-s14")).state_dict().items()},
              str(tmp_path / "release.safetensors"))
    weights.write_bytes((tmp_path / "release.safetensors").read_bytes())
    calls = []

    def fake_download(repo_id: str, filename: str, **kwargs) -> str:
        calls.append(filename)
        if filename.endswith(".safetensors"):
            return str(tmp_path / "release.safetensors")
        raise _not_on_hub(f"https://hub/{repo_id}/{filename}")

    monkeypatch.setattr(uplift.hub, "hf_hub_download", fake_download)
    released = FeatureExtractor("dinov2-s14", backbone_pretrained=False, device="cpu")
    assert calls == ["uplift_dinov2-s14.safetensors", "uplift_dinov2-s14.yaml"]
    assert released.backbone.name == RELEASES["dinov2-s14"].backbone and released.patch_size == 14
    from_file = FeatureExtractor(weights, backbone_pretrained=False, device="cpu")
    assert from_file.backbone.name == RELEASES["dinov3-splus16"].backbone and from_file.patch_size == 16
    assert from_file(_photo(40, 40)).shape == (384, 40, 40)

    folder = UPLiFT(tiny_config(14, channels=32)).save_pretrained(tmp_path / "mine")
    with pytest.raises(ConfigError, match="Cannot tell which backbone .*mine.*backbone='vit_small_patch14_dinov2"):
        FeatureExtractor(folder, device="cpu")
    with pytest.raises(ConfigError, match="does not fit the UPLiFT model: it produces 32-channel features but"):
        FeatureExtractor(weights, backbone=_tiny_backbone(DINOV3), device="cpu")
    assert FeatureExtractor(folder, _tiny_backbone(DINOV2), device="cpu")(_photo(28, 28)).shape == (32, 28, 28)


def test_offline_backbone_download_names_the_way_out(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    folder = UPLiFT(UPLiFTConfig.preset("dinov2-s14")).save_pretrained(tmp_path / "mine")
    with pytest.raises(uplift.WeightsUnavailableError, match=r"(?s)Could not load the pretrained weights of backbone "
                                                            r"'vit_small_patch14_dinov2.*backbone_weights='/path/to/"):
        FeatureExtractor(folder, DINOV2, device="cpu")


def test_vae_model_is_guided_by_the_raw_image(tmp_path: Path) -> None:
    """The VAE model (noise channels, raw-image guide): dense latents, the same as the manual path with the same
    noise."""
    torch.manual_seed(0)
    vae = VAEBackbone(pretrained=False, vae_config=TINY_VAE)
    model = UPLiFT(tiny_vae_config()).eval()
    extractor = FeatureExtractor(model, vae, device="cpu")
    image = _tensor(_photo(40, 56, 100, 100))
    torch.manual_seed(1)
    features = extractor(image)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = model(image[None], vae(image[None]), output_size=(40, 56))[0]
    assert features.shape == (4, 40, 56) and torch.equal(features, expected)
    assert extractor.extract(image).cls is None


def test_pca_image(parts) -> None:
    result = _extractor(parts).extract(_photo(42, 70, 100, 100))
    picture = pca_image(result)
    array = np.asarray(picture)
    assert picture.size == (70, 42) and array.shape == (42, 70, 3) and array.std() > 10
    assert pca_image(result.features[None]).size == (70, 42)
    with pytest.raises(InputError, match="one \\[C, H, W\\] feature map"):
        pca_image(torch.rand(2, 8, 4, 4))


# ---------------------------------------------------------------- hubconf.py through torch.hub


@pytest.fixture
def release_downloads(tmp_path: Path, monkeypatch) -> Path:
    """The hub, replaced at its download calls: UPLiFT's (uplift.hub) returns random weights of the released
    DINOv2 architecture; timm's returns random weights of the real ViT-S/14 (timm's file format)."""
    import timm
    import timm.models._hub as timm_hub

    from tests.test_checkpoints import _not_on_hub

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in UPLiFT(UPLiFTConfig.preset("dinov2-s14")).state_dict().items()},
              str(tmp_path / "uplift.safetensors"))
    vit = timm.create_model(DINOV2, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))

    def uplift_download(repo_id: str, filename: str, **kwargs) -> str:
        if filename.endswith(".safetensors"):
            return str(tmp_path / "uplift.safetensors")
        raise _not_on_hub(f"https://hub/{repo_id}/{filename}")

    monkeypatch.setattr(uplift.hub, "hf_hub_download", uplift_download)
    monkeypatch.setattr(timm_hub, "hf_hub_download", lambda *args, **kwargs: str(tmp_path / "vit.safetensors"))
    return tmp_path


def test_hubconf_runs_release_code_unchanged(release_downloads: Path) -> None:
    """The release's README, line for line, against this repository (source='local' instead of GitHub)."""
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name: str(inspect.signature(entry)) for name, entry in vars(hubconf).items()
               if callable(entry) and not name.startswith("_")}  # what torch.hub.list lists
    release = "(pretrained=True, include_extractor=True, fast=False, **kwargs)"
    assert entries == {"uplift": "(variant='dinov2-s14', " + release[1:], "uplift_dinov2_s14": release,
                       "uplift_dinov3_splus16": release, "uplift_sd15_vae": release}
    assert {"torch", "timm", "safetensors", "huggingface_hub"} <= set(hubconf.dependencies)
    model = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", silent=True)
    image = Image.fromarray(_photo(61, 90, 100, 150))
    features = model(image)
    # the release's default: ONE 2x step of the 4x6 grid of the image resized to 56x84
    assert features.shape == (1, 384, 8, 12)
    backbone = TimmViTBackbone(DINOV2, weights=release_downloads / "vit.safetensors")
    upsampler = UPLiFT.from_pretrained(release_downloads / "uplift.safetensors", config="dinov2-s14")
    resized = _tensor(np.asarray(image.resize((84, 56), resample=Image.BILINEAR)))[None]
    with torch.no_grad():
        expected = upsampler(backbone.normalize(resized), backbone(resized), steps=1)
    torch.testing.assert_close(features, expected, rtol=0, atol=0)

    model = torch.hub.load(str(REPO), "uplift", "dinov2-s14", source="local", iters=4, out_size=61,
                           return_base_feat=True, silent=True)
    features, base = model(image)
    assert features.shape == (1, 384, 61, 91) and base.shape == (1, 384, 4, 6)  # short side of the 64x96 grid
    features, base, latency = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", iters=2,
                                             return_base_feat=True, silent=True)(image, report_latency=True)
    assert features.shape == (1, 384, 16, 24) and set(latency) == {"preproc_time_ms", "extractor_time_ms",
                                                                   "uplift_time_ms"}

    bare = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", include_extractor=False)
    assert isinstance(bare, UPLiFT) and bare.iters == 1
    with torch.no_grad():
        assert torch.equal(bare(backbone.normalize(resized), backbone(resized)), expected)
        bare.enable_iterative(4)
        bare.return_steps(True)
        steps = bare(backbone.normalize(resized), backbone(resized))
        assert [tuple(s.shape[-2:]) for s in steps] == [(8, 12), (16, 24), (32, 48), (64, 96)]
        assert bare(backbone.normalize(resized), backbone(resized), 56).shape == (1, 384, 56, 84)
    assert bare.state_dict().keys() == upsampler.state_dict().keys()  # the release's key names


def test_hubconf_errors_and_options(release_downloads: Path) -> None:
    plain = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", silent=True)
    fast = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", silent=True, fast=True)
    assert fast.uplift.is_fast and not plain.uplift.is_fast
    photo = Image.fromarray(_photo(56, 70))
    with torch.no_grad():
        expected = plain(photo)
        assert float((fast(photo) - expected).norm() / expected.norm()) <= 1e-5  # fast: the same values
    bare = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", include_extractor=False, fast=True)
    assert bare.is_fast and bare.iters == 1
    with pytest.raises(ValueError, match="Unknown variant 'dinov2-g14'"):
        torch.hub.load(str(REPO), "uplift", "dinov2-g14", source="local")
    model = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", silent=True)
    with pytest.raises(InputError, match=r"image is 10x40 pixels \(HxW\), smaller than one 14x14 patch"):
        model(Image.fromarray(_photo(10, 40)))
    random = torch.hub.load(str(REPO), "uplift_dinov2_s14", source="local", pretrained=False, silent=True,
                            backbone_pretrained=False)  # no download at all
    assert random(Image.fromarray(_photo(28, 28))).shape == (1, 384, 4, 4)


def test_hub_vae_entry_decodes(tmp_path: Path, monkeypatch) -> None:
    """`uplift_sd15_vae` with the VAE backbone (tiny, local weights) and local UPLiFT weights: latents, and decode
    to a picture, as the release's extractor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "vae")
    UPLiFT(tiny_vae_config()).save_pretrained(tmp_path / "uplift")
    model = torch.hub.load(str(REPO), "uplift_sd15_vae", source="local", weights=str(tmp_path / "uplift"),
                           backbone_weights=str(tmp_path / "vae"), iters=2, silent=True)
    assert model.extractor_type == "diff" and model.backbone_name == "stable-diffusion-v1-5_vae"
    latents = model(Image.fromarray(_photo(40, 56)))
    assert latents.shape == (1, 4, 20, 28)
    picture = model.decode(latents)
    assert isinstance(picture, Image.Image) and picture.size == (224, 160)


# ---------------------------------------------------------------- parity with the release's own extractor


def test_same_features_as_the_releases_extractor() -> None:
    """tests/data/release_extractor/: the release's UPLiFTExtractor (its code, run by make.py there) on a real photo
    with tiny random weights. Our hub extractor and FeatureExtractor reproduce it: resize, normalisation, backbone,
    steps, out_size."""
    from safetensors.torch import load_file

    from uplift.torchhub import ReleaseExtractor

    case = REPO / "tests" / "data" / "release_extractor"
    expected = load_file(case / "expected.safetensors")
    backbone = TimmViTBackbone(DINOV2, weights=case / "vit.safetensors",
                               model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, img_size=56))
    model = UPLiFT.from_pretrained(case / "uplift.safetensors", config=case / "config.yaml")
    photo = Image.open(case / "photo.png")

    def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
        assert ours.shape == theirs.shape
        assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-5

    for name, kwargs in {"iters4": dict(iters=4), "iters2_outsize47": dict(iters=2, out_size=47)}.items():
        features, base = ReleaseExtractor(model, backbone, return_base_feat=True, silent=True, device="cpu",
                                          **kwargs)(photo)
        close(base, expected[f"{name}.base"])
        close(features[:, ::4], expected[f"{name}.features"])
    result = FeatureExtractor(model, backbone, device="cpu", output_size=RAW).extract(photo)
    close(result.features[None, ::4], expected["iters4.features"])
    close(result.low_res[None], expected["iters4.base"])


def test_every_front_door_loads_weights_through_the_one_resolver(tmp_path: Path, monkeypatch) -> None:
    import uplift.checkpoints as checkpoints
    from uplift.features import main
    from uplift.torchhub import load

    calls = []
    real = checkpoints.load_uplift
    monkeypatch.setattr(checkpoints, "load_uplift",
                        lambda reference, config=None, **kwargs: calls.append(str(reference)) or
                        real(reference, config=config, **kwargs))
    torch.manual_seed(0)
    folder = str(UPLiFT(tiny_config(14, channels=32)).save_pretrained(tmp_path / "mine"))
    FeatureExtractor(folder, _tiny_backbone(DINOV2), device="cpu")
    Image.fromarray(_photo(28, 28)).save(tmp_path / "photo.png")
    assert main([str(tmp_path / "photo.png"), str(tmp_path / "out"), "--weights", folder, "--backbone", DINOV2,
                 "--backbone-random", "--quiet"]) == 2  # a real-size random ViT-S does not fit this tiny model
    load("dinov2-s14", weights=folder, include_extractor=False)
    assert calls == [folder] * 3
