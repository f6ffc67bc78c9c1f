"""model.fast(): the same outputs, an inference-only copy, no graph breaks under torch.compile."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.helpers import tiny_config, tiny_vae_config
from tests.test_tiling import _randomise_norms, _rel
from uplift import UPLiFT, UPLiFTConfig


@pytest.mark.parametrize(("config", "patch", "output_size"), [
    (UPLiFTConfig.preset("dinov2-s14"), 14, (56, 84)),
    (UPLiFTConfig.preset("dinov3-splus16"), 16, None),
    (tiny_vae_config(), 8, (30, 40)),
    (dataclasses.replace(UPLiFTConfig.preset("dinov2-s14"), neighbourhood=None), 14, (56, 84)),  # "No LA"
])  # fmt: skip
def test_fast_equals_plain(config: UPLiFTConfig, patch: int, output_size) -> None:
    torch.manual_seed(0)
    model = _randomise_norms(UPLiFT(config))
    fast = model.fast()
    image = torch.randn(2, 3, 4 * patch, 6 * patch)
    feats = torch.randn(2, config.feature_channels, 4, 6)
    with torch.no_grad():
        torch.manual_seed(5)
        expected = model(image, feats, output_size=output_size)
        torch.manual_seed(5)
        out = fast(image, feats, output_size=output_size)
        assert out.shape == expected.shape and _rel(out, expected) <= 1e-5
        torch.manual_seed(5)
        steps = fast(image, feats, steps=2, return_all_steps=True)
        torch.manual_seed(5)
        for a, b in zip(steps, model(image, feats, steps=2, return_all_steps=True)):
            assert _rel(a, b) <= 1e-5
        torch.manual_seed(5)
        assert _rel(fast(image, feats, output_size=output_size, tile=3), expected) <= 1e-5


def test_fast_folds_and_leaves_the_model_alone() -> None:
    model = UPLiFT(tiny_config(14)).train()
    before = copy.deepcopy(model.state_dict())
    fast = model.fast()
    assert model.training and not fast.training and fast.is_fast and not model.is_fast
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.inplace for m in fast.modules() if isinstance(m, torch.nn.ReLU))
    assert all(not p.requires_grad for p in fast.parameters())
    conv = fast.encoder.block_3.blocks[0].conv[0]
    assert conv.bias is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # the original still trains: batch statistics and gradients as before
    out = model(torch.randn(2, 3, 28, 28), torch.randn(2, 8, 2, 2), steps=2)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fast_is_inference_only(tmp_path) -> None:
    fast = UPLiFT(tiny_config(14)).fast()
    with pytest.raises(ValueError, match="inference-only"):
        fast.train()
    with pytest.raises(ValueError, match="save the original model"):
        fast.save_pretrained(tmp_path)
    fast.eval()  # allowed


def test_fast_keeps_every_input_check() -> None:
    fast = UPLiFT(tiny_config(14)).fast()
    feats = torch.randn(1, 8, 4, 4)
    feats[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fast(torch.randn(1, 3, 56, 56), feats)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        fast(torch.randn(1, 3, 57, 56), torch.randn(1, 8, 4, 4))


def test_from_official_fast(official_dir) -> None:
    name = "dinov2_s14_iter4"
    fast = UPLiFT.from_official(official_dir / f"{name}.weights.safetensors", official_dir / f"{name}.yaml", fast=True)
    plain = UPLiFT.from_official(official_dir / f"{name}.weights.safetensors", official_dir / f"{name}.yaml")
    assert fast.is_fast and not plain.is_fast
    image, feats = torch.randn(1, 3, 56, 70), torch.randn(1, 384, 4, 5)
    with torch.no_grad():
        assert _rel(fast(image, feats, output_size=(56, 70)), plain(image, feats, output_size=(56, 70))) <= 1e-5


def test_fast_compiles_without_graph_breaks() -> None:
    """Traced by dynamo with fullgraph=True (the eager backend: inductor's C++ build takes minutes on 2 cores)."""
    torch.manual_seed(0)
    model = _randomise_norms(UPLiFT(tiny_vae_config()))  # noise channels, refiner, LayerNorm
    fast = model.fast()
    image, feats = torch.rand(1, 3, 32, 40), torch.randn(1, 4, 4, 5)
    explained = torch._dynamo.explain(fast)(image, feats, output_size=(30, 44))
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(fast, fullgraph=True, dynamic=False, backend="eager")
    with torch.no_grad():
        torch.manual_seed(2)
        out = compiled(image, feats, output_size=(30, 44))
        torch.manual_seed(2)
        assert _rel(out, model(image, feats, output_size=(30, 44))) <= 1e-5
        bad = feats.clone()
        bad[0, 0, 1, 1] = float("inf")
        with pytest.raises(RuntimeError, match="NaN or inf"):  # asserted on the device, not a host sync
            compiled(image, bad, output_size=(30, 44))


def test_fast_leaves_the_random_stream_alone() -> None:
    """Folding BatchNorm builds new convolutions without a random initialisation: code that seeds, builds a
    fast copy, then builds something random gets what it got without the fast copy."""
    model = UPLiFT(tiny_config(14))
    state = torch.random.get_rng_state()
    model.fast()
    assert torch.equal(torch.random.get_rng_state(), state)
