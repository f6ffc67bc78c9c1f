"""Local Attender: equality with naive formulations, convexity, offsets, gradients, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from uplift import NEIGHBOURHOODS, LocalAttender, local_attend, local_attend_reference


def _random_weights(b: int, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, h, w, generator=g).softmax(dim=1)


def _loop_reference(weights: torch.Tensor, value: torch.Tensor, offsets) -> torch.Tensor:
    """Pixel-by-pixel definition from the paper, with replication padding as index clamping."""
    b, c, h, w = value.shape
    scale = weights.shape[-1] // w
    out = torch.zeros(b, c, h * scale, w * scale, dtype=value.dtype)
    for y, x in itertools.product(range(h * scale), range(w * scale)):
        ty, tx = y // scale, x // scale
        for k, (dy, dx) in enumerate(offsets):
            sy, sx = min(max(ty + dy, 0), h - 1), min(max(tx + dx, 0), w - 1)
            out[:, :, y, x] += weights[:, k, y, x, None] * value[:, :, sy, sx]
    return out


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
@pytest.mark.parametrize("scale", [2, 4])
def test_matches_naive_formulations(n: int, scale: int) -> None:
    value = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    weights = _random_weights(2, n, 3 * scale, 4 * scale).double()
    ours = local_attend(weights, value, NEIGHBOURHOODS[n])
    torch.testing.assert_close(ours, local_attend_reference(weights, value, NEIGHBOURHOODS[n]))
    torch.testing.assert_close(ours, _loop_reference(weights, value, NEIGHBOURHOODS[n]))


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
def test_module_matches_naive_on_larger_input(n: int) -> None:
    attender = LocalAttender(guide_channels=24, neighbourhood=n)
    guide, value = torch.randn(3, 24, 20, 28), torch.randn(3, 7, 5, 7)
    with torch.no_grad():
        expected = local_attend_reference(attender.attention(guide), value, NEIGHBOURHOODS[n])
        torch.testing.assert_close(attender(guide, value), expected, rtol=1e-5, atol=1e-6)


def test_neighbourhood_shapes_and_channel_order() -> None:
    assert {n: len(o) for n, o in NEIGHBOURHOODS.items()} == {5: 5, 9: 9, 13: 13, 17: 17, 25: 25}
    for n, offsets in NEIGHBOURHOODS.items():
        assert len(set(offsets)) == n and (0, 0) in offsets
        assert list(offsets) == sorted(offsets), "channel order is raster order over (dy, dx)"
    assert NEIGHBOURHOODS[9] == tuple(itertools.product(range(-1, 2), repeat=2))
    star = {(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)} | set(NEIGHBOURHOODS[9])
    assert set(NEIGHBOURHOODS[17]) == star


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
def test_one_hot_weights_pick_the_offset_token(n: int) -> None:
    """Weight 1 on channel k copies the value token at offset k: pins the checkpoint channel order."""
    value = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 1, 5, 6)
    for k, (dy, dx) in enumerate(NEIGHBOURHOODS[n]):
        weights = torch.zeros(1, n, 10, 12)
        weights[:, k] = 1
        out = local_attend(weights, value, NEIGHBOURHOODS[n])
        # low-res token (2, 2) owns output cell rows 4-5, cols 4-5; (2+dy, 2+dx) is inside the grid
        assert torch.all(out[0, 0, 4:6, 4:6] == value[0, 0, 2 + dy, 2 + dx])
        # at the corner the neighbour index is clamped (replication padding)
        assert out[0, 0, 0, 0] == value[0, 0, max(dy, 0), max(dx, 0)]


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
def test_output_is_convex_combination_of_neighbourhood(n: int) -> None:
    attender = LocalAttender(guide_channels=16, neighbourhood=n)
    guide, value = torch.randn(2, 16, 24, 16) * 5, torch.randn(2, 8, 6, 4)
    with torch.no_grad():
        out = attender(guide, value)
    r = max(max(abs(a), abs(b)) for a, b in NEIGHBOURHOODS[n])
    padded = torch.nn.functional.pad(value, (r, r, r, r), mode="replicate")
    stack = torch.stack([padded[:, :, r + dy : r + dy + 6, r + dx : r + dx + 4] for dy, dx in NEIGHBOURHOODS[n]])
    lo = stack.amin(0).repeat_interleave(4, -2).repeat_interleave(4, -1)
    hi = stack.amax(0).repeat_interleave(4, -2).repeat_interleave(4, -1)
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)
    assert not torch.allclose(out, value.repeat_interleave(4, -2).repeat_interleave(4, -1))


def test_gradcheck_guide_value_and_weights() -> None:
    attender = LocalAttender(guide_channels=6, neighbourhood=5).double()
    guide = torch.randn(1, 6, 4, 6, dtype=torch.float64, requires_grad=True)
    value = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attender, (guide, value))
    attender(guide, value).sum().backward()
    assert attender.conv1.weight.grad is not None and attender.conv1.weight.grad.abs().sum() > 0


def test_guide_with_fewer_channels_than_offsets() -> None:
    attender = LocalAttender(guide_channels=3, neighbourhood=17)
    out = attender(torch.randn(1, 3, 8, 8), torch.randn(1, 4, 4, 4))
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("guide_shape", "value_shape", "match"),
    [
        ((1, 8, 9, 8), (1, 4, 4, 4), "integer scale"),
        ((1, 8, 8, 12), (1, 4, 4, 4), "integer scale"),
        ((1, 8, 2, 2), (1, 4, 4, 4), "integer scale"),
        ((8, 8, 8), (1, 4, 4, 4), r"\[B, 8, H_out, W_out\]"),
        ((1, 8, 8, 8), (4, 4, 4), "4-D"),
        ((1, 5, 8, 8), (1, 4, 4, 4), r"\[B, 8, H_out, W_out\]"),
        ((2, 8, 8, 8), (1, 4, 4, 4), "batch sizes differ"),
    ],
)
def test_bad_shapes_raise_value_error(guide_shape, value_shape, match) -> None:
    attender = LocalAttender(guide_channels=8, neighbourhood=9)
    with pytest.raises(ValueError, match=match):
        attender(torch.randn(guide_shape), torch.randn(value_shape))


def test_unknown_neighbourhood() -> None:
    with pytest.raises(ValueError, match="one of"):
        LocalAttender(8, neighbourhood=7)


# ------------------------------------------------------------------ implementations and dispatch

CPU_IMPLS = ("bands", "offsets", "reference")


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_every_cpu_impl_matches_the_pixel_loop(n: int, scale: int) -> None:
    value = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    weights = _random_weights(2, n, 3 * scale, 4 * scale, seed=n).double()
    expected = _loop_reference(weights, value, NEIGHBOURHOODS[n])
    for impl in CPU_IMPLS:
        torch.testing.assert_close(local_attend(weights, value, NEIGHBOURHOODS[n], impl=impl), expected, msg=impl)


def test_bands_with_channels_last_and_many_bands(monkeypatch) -> None:
    """Tiny bands force many of them (and a partial last one); channels-last inputs read as views."""
    import uplift.kernels.attend_cpu as cpu

    monkeypatch.setattr(cpu, "BAND_BYTES", 1)
    value = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    weights = _random_weights(2, 17, 14, 10).contiguous(memory_format=torch.channels_last)
    out = local_attend(weights, value, NEIGHBOURHOODS[17], impl="bands")
    torch.testing.assert_close(out, local_attend_reference(weights, value, NEIGHBOURHOODS[17]), rtol=1e-5, atol=1e-6)


def test_attend_padded_reads_the_real_neighbours_of_a_crop() -> None:
    """Inside a tile the value map is padded with its true neighbours: the crop's output is the
    whole map's output there."""
    from uplift.attender import attend_padded

    offsets = NEIGHBOURHOODS[25]
    value, weights = torch.randn(1, 3, 9, 8), _random_weights(1, 25, 18, 16)
    whole = local_attend(weights, value, offsets)
    for impl in CPU_IMPLS:
        part = attend_padded(weights[..., 6:12, 4:10], value[..., 1:8, 0:7], offsets, impl=impl)
        torch.testing.assert_close(part, whole[..., 6:12, 4:10], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n", "scale"), [(5, 2), (17, 2), (13, 3)])
def test_bands_gradcheck(n: int, scale: int) -> None:
    weights = _random_weights(2, n, 3 * scale, 2 * scale).double().requires_grad_()
    value = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, v: local_attend(w, v, NEIGHBOURHOODS[n], impl="bands"), (weights, value))


def test_dispatch_and_override(monkeypatch) -> None:
    from uplift.attender import IMPL_ENV, resolve_impl

    x = torch.zeros(1)
    monkeypatch.delenv(IMPL_ENV, raising=False)
    assert resolve_impl(None, x) == resolve_impl("auto", x) == "bands"
    assert resolve_impl("reference", x) == "reference"
    monkeypatch.setenv(IMPL_ENV, "offsets")
    assert resolve_impl(None, x) == "offsets" and resolve_impl("bands", x) == "bands"
    monkeypatch.setenv(IMPL_ENV, "fastest")
    with pytest.raises(ValueError, match="UPLIFT_ATTEND_IMPL='fastest' is not one of"):
        resolve_impl(None, x)
    with pytest.raises(ValueError, match="impl='cuda' is not one of"):
        resolve_impl("cuda", x)
    with pytest.raises(ValueError, match="impl must be one of"):
        LocalAttender(8, impl="fast")


def test_triton_on_cpu_without_the_interpreter_names_the_way_out(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        local_attend(_random_weights(1, 5, 4, 4), torch.randn(1, 2, 2, 2), NEIGHBOURHOODS[5], impl="triton")
