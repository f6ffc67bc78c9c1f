"""Tiled inference equals untiled inference; crop resampling equals PyTorch's; position-indexed noise."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_config, tiny_vae_config
from uplift import UPLiFT, UPLiFTConfig
from uplift.noise import Noise
from uplift.resample import Crop, Resize, Span, constant_for_compile, nearest_crop, resample
from uplift.tiling import Box, Reach, halo


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _randomise_norms(model: UPLiFT) -> UPLiFT:
    """Random BatchNorm statistics and affine parameters, so that every path is exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


CASES = {
    # name: (config, patch, steps, output_size as a function of the image size)
    "p14-pixel-dense": (tiny_config(14), 14, 4, lambda h, w: (h, w)),
    "p16-two-steps": (tiny_config(16), 16, 2, lambda h, w: None),
    "p16-beyond-native": (tiny_config(16), 16, 5, lambda h, w: None),
    "p8-odd-output": (tiny_config(8), 8, 3, lambda h, w: (h // 2 + 3, w - 5)),
    "vae-noise-refiner": (tiny_vae_config(), 8, 2, lambda h, w: None),
    "no-local-attender": (tiny_config(14, neighbourhood=None), 14, 3, lambda h, w: (h, w)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiled_equals_untiled(name: str) -> None:
    config, patch, steps, output_size = CASES[name]
    torch.manual_seed(0)
    model = _randomise_norms(UPLiFT(config))
    h, w = 5, 7  # tokens: tiles of 2 and 3 leave partial tiles at the edges
    image, feats = torch.randn(2, 3, h * patch, w * patch), torch.randn(2, config.feature_channels, h, w)
    size = output_size(h * patch, w * patch)
    with torch.no_grad():
        torch.manual_seed(7)
        expected = model(image, feats, steps=steps, output_size=size)
        for tile in (2, 3):
            torch.manual_seed(7)  # the noise seed of the call: the same noise field for every tile
            tiled = model(image, feats, steps=steps, output_size=size, tile=tile)
            assert tiled.shape == expected.shape
            assert _rel(tiled, expected) <= 1e-5, (tile, _rel(tiled, expected))


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiles_of_a_row_hand_over_the_encoder_and_still_equal_untiled(name: str) -> None:
    """Tiles wider than the halo: each tile takes the encoder outputs it shares with its left neighbour
    from it (``uplift.tiling._Carry``), and the result is still the untiled one."""
    config, patch, steps, output_size = CASES[name]
    torch.manual_seed(0)
    model = _randomise_norms(UPLiFT(config))
    h, w = 4, 26
    image, feats = torch.randn(1, 3, h * patch, w * patch), torch.randn(1, config.feature_channels, h, w)
    size = output_size(h * patch, w * patch)
    with torch.no_grad():
        torch.manual_seed(7)
        expected = model(image, feats, steps=steps, output_size=size)
        torch.manual_seed(7)
        tiled = model(image, feats, steps=steps, output_size=size, tile=6)
    assert _rel(tiled, expected) <= 1e-5, _rel(tiled, expected)


def test_the_encoder_runs_once_per_column_of_a_tile_row(monkeypatch) -> None:
    """Along a row of tiles the encoder computes each column once, up to its reach at each tile's left
    edge, not once per tile whose halo reads it (what made tiles cost 2-4x the untiled encoder)."""
    model = _randomise_norms(UPLiFT(tiny_config(16)))
    h, w, tile = 3, 40, 5  # one row of 8 tiles, each wider than the halo
    image, feats = torch.randn(1, 3, 16 * h, 16 * w), torch.randn(1, 8, h, w)
    widths: list[int] = []
    forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x, *a, **k: widths.append(x.shape[-1]) or forward(x, *a, **k))
    with torch.no_grad():
        model(image, feats, tile=tile)
    assert len(widths) <= w // tile  # one band per tile (the last tile was handed all its columns)
    spans = sum(min(16 * w, 16 * (t + tile + 2 * halo(model))) - max(0, 16 * (t - halo(model)))
                for t in range(0, w, tile))  # what tiles computing their whole span would cost
    overlap = 2 * (model.reach.encoder + 2)  # each tile recomputes the encoder's reach, on the stride-2 grid
    assert sum(widths) <= 16 * w + (w // tile - 1) * overlap < spans


def test_tiles_compile_without_graph_breaks() -> None:
    """The tiled path (plans, hand-overs and all) traces whole with dynamo, at every image size it is
    called at (one graph each), and computes the same values."""
    model = _randomise_norms(UPLiFT(tiny_config(16))).fast()
    # fullgraph: a graph break raises; the eager backend: inductor's C++ build takes minutes on 2 cores
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="eager")
    with torch.no_grad():
        for h, w in ((2, 12), (3, 10)):  # a row of three tiles; then two rows of three
            image, feats = torch.randn(1, 3, 16 * h, 16 * w), torch.randn(1, 8, h, w)
            assert _rel(compiled(image, feats, tile=4), model(image, feats, tile=4)) <= 1e-6


def test_tiled_float64_and_batch() -> None:
    model = _randomise_norms(UPLiFT(tiny_config(14))).double()
    image, feats = torch.randn(3, 3, 56, 84, dtype=torch.float64), torch.randn(3, 8, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = model(image, feats, output_size=(50, 90))
        torch.testing.assert_close(model(image, feats, output_size=(50, 90), tile=2), expected, rtol=1e-9, atol=1e-10)


def test_iter_tiles_partitions_the_output_and_is_lazy() -> None:
    model = _randomise_norms(UPLiFT(tiny_config(14)))
    image, feats = torch.randn(1, 3, 70, 98), torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        expected = model(image, feats, steps=3, output_size=(70, 98))
        tiles = model.iter_tiles(image, feats, steps=3, tile=3, output_size=(70, 98))
        assert not isinstance(tiles, (list, tuple))
        covered = torch.zeros(70, 98, dtype=torch.int64)
        boxes = []
        for box, part in tiles:
            assert isinstance(box, Box) and part.shape == (1, 8, box.height, box.width)
            torch.testing.assert_close(part, expected[..., box.slices[0], box.slices[1]], rtol=1e-5, atol=1e-6)
            covered[box.slices] += 1
            boxes.append(box)
    assert bool((covered == 1).all()), "tiles must cover the output exactly once"
    assert [b.top for b in boxes] == sorted(b.top for b in boxes), "raster order"
    assert len(boxes) == 2 * 3  # ceil(5 / 3) x ceil(7 / 3)


def test_iter_tiles_holds_no_tile_the_consumer_dropped(monkeypatch) -> None:
    """While a tile is computed, the tiles before it (dropped by the consumer) are already freed: memory is
    one tile's, not two."""
    model = _randomise_norms(UPLiFT(tiny_config(16)))
    image, feats = torch.randn(1, 3, 64, 160), torch.randn(1, 8, 4, 10)
    dropped: list[weakref.ref] = []
    alive_during_compute: list[int] = []
    forward = model.encoder.forward

    def encoder(x, *args, **kwargs):
        alive_during_compute.append(sum(ref() is not None for ref in dropped))
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model.encoder, "forward", encoder)
    with torch.no_grad():
        for _, part in model.iter_tiles(image, feats, tile=2):
            dropped.append(weakref.ref(part))
            del part
    assert len(dropped) == 10 and alive_during_compute and not any(alive_during_compute)


def test_iter_tiles_checks_inputs_before_iterating() -> None:
    model = UPLiFT(tiny_config(14))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model.iter_tiles(torch.randn(1, 3, 57, 56), torch.randn(1, 8, 4, 4), tile=2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tile": 0}, "`tile` must be a positive"),
    ({"tile": 2.5}, "`tile` must be a positive"),
    ({"tile": True}, "`tile` must be a positive"),
    ({"tile": 2, "return_all_steps": True}, "not both"),
])  # fmt: skip
def test_bad_tile_raises_value_error(kwargs, match: str) -> None:
    model = UPLiFT(tiny_config(14)).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(1, 3, 56, 56), torch.randn(1, 8, 4, 4), **kwargs)


def test_halo_is_derived_from_the_configuration() -> None:
    released = UPLiFT(UPLiFTConfig.preset("dinov2-s14"))
    assert released.reach == Reach(decoder_low=2, decoder_high=2, refiner=0, attender=2, encoder=5, native=4,
                                   strided_last=True, refiner_reads_last=False)
    assert halo(released) == 8  # tokens, on each side, at the release's 4 steps
    assert [halo(released, s) for s in (1, 2, 3, 4)] == sorted(halo(released, s) for s in (1, 2, 3, 4))
    wider = UPLiFT(UPLiFTConfig(neighbourhood=25, decoder_low={"widths": [64, 64], "block": "double"}))
    assert halo(wider) > halo(released)
    vae = UPLiFT(UPLiFTConfig.preset("sd15-vae"))
    assert vae.reach.refiner == 12 and vae.reach.encoder == 10 and not vae.reach.strided_last
    assert halo(vae, 1) > halo(released, 1)


# ------------------------------------------------------------------ resampling crops


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("size_in", "size_out"), [((87, 512), (73, 448)), ((14, 18), (33, 50)), ((30, 31), (7, 9))])
def test_antialiased_resize_of_a_crop_is_pytorchs(fmt, size_in, size_out) -> None:
    (hi, wi), (ho, wo) = size_in, size_out
    x = torch.randn(2, 5, hi, wi).contiguous(memory_format=fmt)
    expected = F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=False, antialias=True)
    rows, cols = Resize("aa", hi, ho, False), Resize("aa", wi, wo, False)
    whole = resample(x, (rows, Span(0, ho), 0), (cols, Span(0, wo), 0))
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-6)
    part = resample(x[..., 3:, 5:], (rows, Span(ho // 3, ho - 2), 3), (cols, Span(wo // 2, wo), 5))
    torch.testing.assert_close(part, expected[..., ho // 3 : ho - 2, wo // 2 :], rtol=0, atol=1e-6)
    out = torch.zeros(2, 5, ho, wo).contiguous(memory_format=fmt)
    resample(x, (rows, Span(0, ho), 0), (cols, Span(0, wo), 0), out=out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_corner_aligned_and_nearest_resizes_of_a_crop_are_pytorchs() -> None:
    x = torch.randn(1, 4, 11, 13)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    part = resample(x[..., 2:9, 1:], (Resize("corners", 11, 22, False), Span(6, 15), 2),
                    (Resize("corners", 13, 26, False), Span(4, 26), 1))
    torch.testing.assert_close(part, expected[..., 6:15, 4:26], rtol=0, atol=1e-6)
    nearest = F.interpolate(x, size=(33, 26), mode="nearest")
    torch.testing.assert_close(nearest_crop(x[..., 2:, 1:], Crop(2, 1, 11, 13), Crop(7, 5, 33, 26), (20, 19)),
                               nearest[..., 7:27, 5:24])
    with pytest.raises(RuntimeError, match="outside its input crop"):
        nearest_crop(x[..., 5:, :], Crop(5, 0, 11, 13), Crop(0, 0, 22, 26), (4, 4))


def test_plan_functions_are_compile_constants() -> None:
    """``constant_for_compile`` must mark a function exactly as torch.compiler.assume_constant_result does."""

    def f() -> int:
        return 1

    def g() -> int:
        return 1

    torch.compiler.assume_constant_result(f)
    constant_for_compile(g)
    assert {k: v for k, v in vars(f).items()} == {k: v for k, v in vars(g).items()} != {}


# ------------------------------------------------------------------ noise


def test_noise_is_a_function_of_position() -> None:
    noise = Noise(12345)
    whole = noise.sample(2, 3, Crop(0, 0, 40, 50), (40, 50), Noise.DECODER_LOW, torch.float32, torch.device("cpu"))
    part = noise.sample(2, 3, Crop(7, 11, 40, 50), (20, 30), Noise.DECODER_LOW, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(part, whole[..., 7:27, 11:41], rtol=0, atol=0)
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05
    other_stage = noise.sample(2, 3, Crop(0, 0, 40, 50), (40, 50), Noise.DECODER_HIGH, torch.float32, torch.device("cpu"))
    other_size = noise.sample(2, 3, Crop(0, 0, 40, 51), (40, 50), Noise.DECODER_LOW, torch.float32, torch.device("cpu"))
    other_seed = Noise(12346).sample(2, 3, Crop(0, 0, 40, 50), (40, 50), Noise.DECODER_LOW, torch.float32, torch.device("cpu"))
    for other in (other_stage, other_size, other_seed):
        assert abs(float((whole * other).mean())) < 0.05, "independent streams must be uncorrelated"
    assert abs(float((whole[0] * whole[1]).mean())) < 0.05 and abs(float((whole[:, 0] * whole[:, 1]).mean())) < 0.05
    torch.manual_seed(3)
    a = Noise.draw().seed
    torch.manual_seed(3)
    assert int(Noise.draw().seed) == int(a) and int(Noise.draw().seed) != int(a)


def test_tiles_and_fast_mode_backpropagate_like_the_untiled_model() -> None:
    """Outside ``torch.no_grad`` the tiled and fast paths stay differentiable: the same gradients w.r.t. the
    features and the image (the in-place products fall back to ones autograd can differentiate; the encoder
    outputs tiles hand each other carry their graph)."""
    torch.manual_seed(0)
    model = _randomise_norms(UPLiFT(tiny_config(14)))
    image = torch.randn(1, 3, 56, 168, requires_grad=True)  # a row of tiles that hand the encoder over
    feats = torch.randn(1, 8, 4, 12, requires_grad=True)

    def grad(module: UPLiFT, **kwargs) -> list[torch.Tensor]:
        out = module(image, feats, steps=3, output_size=(56, 168), **kwargs)
        return list(torch.autograd.grad(out.square().sum(), [feats, image]))

    expected = grad(model)
    for got in (grad(model, tile=2), grad(model, tile=4), grad(model.fast())):
        assert [_rel(g, e) <= 1e-5 for g, e in zip(got, expected)] == [True, True]
