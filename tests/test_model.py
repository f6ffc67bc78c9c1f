"""UPLiFT model: output shapes, steps, configuration, gradients and input validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from tests.helpers import tiny_config, tiny_vae_config
from uplift import UPLiFT, UPLiFTConfig
from uplift.config import official_to_config


@pytest.mark.parametrize(("patch", "native"), [(8, 3), (14, 4), (16, 4)])
def test_shapes_batch_and_non_square(patch: int, native: int) -> None:
    model = UPLiFT(tiny_config(patch)).eval()
    h, w = 3, 5
    image, feats = torch.randn(2, 3, h * patch, w * patch), torch.randn(2, 8, h, w)
    with torch.no_grad():
        out = model(image, feats)
        assert out.shape == (2, 8, h * 2**native, w * 2**native)
        steps = model(image, feats, steps=2, return_all_steps=True)
        assert [tuple(s.shape[-2:]) for s in steps] == [(h * 2, w * 2), (h * 4, w * 4)]
        dense = model(image, feats, output_size=(h * patch, w * patch))
        assert dense.shape == (2, 8, h * patch, w * patch)
    assert model.config.native_steps == native == math.ceil(math.log2(patch))


def test_last_step_equals_last_of_all_steps_and_steps_are_iterative() -> None:
    model = UPLiFT(tiny_config(16)).eval()
    image, feats = torch.randn(1, 3, 64, 32), torch.randn(1, 8, 4, 2)
    with torch.no_grad():
        all_steps = model(image, feats, steps=3, return_all_steps=True)
        torch.testing.assert_close(model(image, feats, steps=3), all_steps[-1])
        enc = model.encode_image(image)
        torch.testing.assert_close(model.step(all_steps[0], enc), all_steps[1])


def test_output_stays_in_feature_range_without_refiner() -> None:
    """The attender makes every output a convex combination of input tokens."""
    model = UPLiFT(tiny_config(8)).eval()
    feats = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), feats)
    lo, hi = feats.amin(dim=(2, 3), keepdim=True), feats.amax(dim=(2, 3), keepdim=True)
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)


def test_vae_shaped_model_with_noise_and_refiner() -> None:
    model = UPLiFT(tiny_vae_config()).eval()
    image, lat = torch.rand(1, 3, 32, 48), torch.randn(1, 4, 4, 6)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(image, lat, steps=2)
        torch.manual_seed(0)
        b = model(image, lat, steps=2)
        c = model(image, lat, steps=2)
    assert a.shape == (1, 4, 16, 24)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c), "noise channels must make repeated calls differ"


def test_gradients_reach_every_parameter() -> None:
    model = UPLiFT(tiny_vae_config(noise_scale=0.5)).train()
    out = model(torch.rand(2, 3, 16, 16), torch.randn(2, 4, 2, 2), steps=2)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_released_presets_parameter_counts() -> None:
    assert UPLiFT(UPLiFTConfig.preset("dinov2-s14")).num_parameters() == 789_521
    assert UPLiFT(UPLiFTConfig.preset("dinov3-splus16")).num_parameters() == 789_521
    vae = UPLiFT(UPLiFTConfig.preset("sd15-vae")).num_parameters()
    assert 53.4e6 < vae < 53.6e6
    with pytest.raises(ValueError, match="Unknown UPLiFT preset"):
        UPLiFTConfig.preset("dinov2-b14")


@pytest.mark.parametrize(("case", "preset"), [("dinov2_s14_iter4", "dinov2-s14"), ("dinov3_splus16_iter2_batch2", "dinov3-splus16")])
def test_release_configs_translate_to_presets(official_dir, case: str, preset: str) -> None:
    assert official_to_config(official_dir / f"{case}.yaml") == UPLiFTConfig.preset(preset)


def test_unsupported_release_options_are_named(official_dir) -> None:
    cfg = yaml.safe_load((official_dir / "dinov2_s14_iter4.yaml").read_text())
    cfg["uplift"]["enc_share"] = False
    cfg["uplift"]["encoder"]["down_2"]["down_op"] = "max"
    with pytest.raises(ValueError, match=r"uplift.enc_share=False.*encoder.down_2.down_op='max'"):
        official_to_config(cfg)
    with pytest.raises(ValueError, match="missing section"):
        official_to_config({"uplift": cfg["uplift"]})


def test_config_is_readable_by_jsonargparse(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text(
        "uplift:\n  feature_channels: 4\n  patch_size: 8\n  norm: layer\n"
        "  encoder: [{widths: [4]}, {widths: [8, 8]}]\n  decoder_low: {widths: [8], block: double}\n"
        "  refiner: {widths: [8], noise_channels: 1}\n"
    )
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_argument("--uplift", type=UPLiFTConfig)
    cfg = parser.instantiate(parser.parse_args(["--config", str(tmp_path / "c.yaml")]))
    config = cfg.uplift
    assert isinstance(config, UPLiFTConfig) and config.encoder[1].widths == [8, 8] and config.refiner.noise_channels == 1
    assert UPLiFT(config)(torch.rand(1, 3, 16, 16), torch.randn(1, 4, 2, 2), steps=1).shape == (1, 4, 4, 4)


def test_invalid_config_lists_problems() -> None:
    with pytest.raises(ValueError, match=r"at least 2 groups.*neighbourhood must be one of"):
        UPLiFTConfig(neighbourhood=7, encoder=[{"widths": [4]}])


@pytest.fixture
def model() -> UPLiFT:
    return UPLiFT(tiny_config(14)).eval()


@pytest.mark.parametrize(
    ("image", "features", "kwargs", "match"),
    [
        ((1, 3, 57, 56), (1, 8, 4, 4), {}, r"57x56 is not a multiple of the patch size 14.*56x56"),
        ((1, 3, 56, 56), (1, 6, 4, 4), {}, "6 channels but this UPLiFT model upsamples 8-channel"),
        ((3, 56, 56), (1, 8, 4, 4), {}, "unsqueeze"),
        ((1, 3, 56, 56), (8, 4, 4), {}, "unsqueeze"),
        ((1, 1, 56, 56), (1, 8, 4, 4), {}, r"\[B, 3, H, W\]"),
        ((2, 3, 56, 56), (1, 8, 4, 4), {}, "batch size"),
        ((1, 3, 56, 56), (1, 8, 3, 4), {}, "does not match the image"),
        ((1, 3, 56, 56), (1, 8, 4, 4), {"steps": 0}, "positive integer"),
        ((1, 3, 56, 56), (1, 8, 4, 4), {"output_size": (56, 56), "return_all_steps": True}, "not both"),
        ((1, 3, 56, 56), (1, 8, 4, 4), {"output_size": (56,)}, "output_size"),
    ],
)
def test_bad_input_raises_one_clear_value_error(model, image, features, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        model(torch.randn(image), torch.randn(features), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_rejected(model, bad: float) -> None:
    feats = torch.randn(1, 8, 4, 4)
    feats[0, 3, 1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        model(torch.randn(1, 3, 56, 56), feats)


def test_inputs_in_the_weights_dtype_or_under_autocast_are_accepted(model) -> None:
    """The dtype rule refuses only what torch itself cannot run: a bf16 model takes bf16 inputs, and under
    autocast a float32 model takes bf16 features (what a bf16-mixed backbone gives)."""
    image, feats = torch.rand(1, 3, 56, 56), torch.randn(1, 8, 4, 4)
    assert model(image, feats, steps=1).dtype == torch.float32
    half = UPLiFT(tiny_config(14)).eval().to(torch.bfloat16)
    assert half(image.bfloat16(), feats.bfloat16(), steps=1).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(image, feats.bfloat16(), steps=1).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"`features` has dtype torch.bfloat16 but UPLiFT's weights are torch.float32"):
        model(image, feats.bfloat16(), steps=1)


def test_lift_shares_the_input_rules() -> None:
    from uplift.lift import LiFT, LiFTConfig

    lift = LiFT(LiFTConfig(feature_channels=8, patch_size=14, guide_channels=4)).eval()
    with pytest.raises(ValueError, match="dtype torch.float16"):
        lift(torch.rand(1, 3, 56, 56).half(), torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"pass \(56, 56\) for a square"):
        lift(torch.rand(1, 3, 56, 56), torch.randn(1, 8, 4, 4), output_size=56)


def test_no_local_attender_option_builds_trains_and_upsamples() -> None:
    """``neighbourhood=None`` (the paper's "No LA", the release's ``attender: -1``): no attender, the decoder ends
    in the release's ``decoder.outc`` 1x1 conv plus a channel residual, and the model still learns."""
    torch.manual_seed(0)
    config = tiny_config(14, neighbourhood=None)
    model = UPLiFT(config)
    assert model.attender is None and "decoder.outc.weight" in model.state_dict()
    assert not any(k.startswith("attender.") for k in model.state_dict())
    image, feats = torch.rand(2, 3, 56, 42), torch.randn(2, 8, 4, 3)
    assert model.eval()(image, feats, output_size=(56, 42)).shape == (2, 8, 56, 42)
    # the step's output is outc(guide) + guide[:, :C] (the decoder is 8 wide here, as the features)
    model.train()
    target = torch.nn.functional.interpolate(feats, scale_factor=2, mode="nearest")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(image, feats, steps=1), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="or None"):
        tiny_config(14, neighbourhood=7)


def test_release_config_without_attender_is_no_la(official_dir) -> None:
    import copy

    data = yaml.safe_load((official_dir / "dinov2_s14_iter4.yaml").read_text())
    data = copy.deepcopy(data)
    data["uplift"]["attender"] = -1
    assert official_to_config(data).neighbourhood is None
    data["uplift"].pop("attender")  # the release's default is no attender
    assert official_to_config(data).neighbourhood is None
    data["uplift"]["decoder"]["residual_outc"] = False
    with pytest.raises(ValueError, match="residual_outc"):
        official_to_config(data)


def test_no_la_equals_the_release_without_attender() -> None:
    """The release's ``attender: -1`` model (tests/data/release_no_la, made by running the release) loads through
    the one weight resolver and computes the same steps."""
    from safetensors.torch import load_file

    from uplift.checkpoints import load_uplift

    here = Path(__file__).parent / "data" / "release_no_la"
    model = load_uplift(here / "no_la.weights.safetensors", config=here / "no_la.yaml").eval()
    assert model.config.neighbourhood is None
    case = load_file(str(here / "no_la.case.safetensors"))
    with torch.no_grad():
        steps = model(case["input.image"], case["input.features"], steps=2, return_all_steps=True)
        for k, ours in enumerate(steps, start=1):
            expected = case[f"output.step{k}"]
            assert float((ours - expected).norm() / expected.norm()) <= 1e-5
        tiled = model.fast()(case["input.image"], case["input.features"], steps=2, tile=2)
        assert float((tiled - case["output.step2"]).norm() / case["output.step2"].norm()) <= 1e-5


def test_numpy_and_torch_integers_are_accepted_floats_are_not(model) -> None:
    import numpy as np

    image, feats = torch.rand(1, 3, 56, 56), torch.randn(1, 8, 4, 4)
    expected = model(image, feats, steps=2, output_size=(30, 40))
    same = model(image, feats, steps=np.int64(2), output_size=(np.int32(30), torch.tensor(40)))
    assert torch.equal(same, expected)
    tiled = model(image, feats, steps=2, output_size=torch.Size([30, 40]), tile=np.int64(2))
    assert float((tiled - expected).norm() / expected.norm()) <= 1e-5  # tiles: equal to float rounding
    for bad in ({"steps": 2.0}, {"output_size": (30.0, 40)}, {"output_size": (30, True)}, {"tile": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            model(image, feats, **{"steps": 2, **bad})
