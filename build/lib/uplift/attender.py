"""The Local Attender: attention pooling over a fixed local neighbourhood (paper section 3.2).

A high-resolution *guide* map predicts, for every output pixel, softmax weights over ``n`` fixed
offsets around the low-resolution *value* token that the pixel's cell belongs to. The output is
the weighted sum of those ``n`` value tokens, so every output feature is a convex combination of
input features: this is what keeps the upsampled features in the backbone's distribution.

Cost is O(n * H_out * W_out * C), linear in the number of tokens. The implementation here never
builds the ``n x C x H_out x W_out`` tensor that the straightforward formulation (kept as
:func:`local_attend_reference` as the test oracle) needs: it accumulates one offset at a time into
the output with broadcasting, so its peak extra memory is the output itself plus the ``n``-channel
weight map (see ``bench/local_attender.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.blocks import add_channel_residual

__all__ = ["NEIGHBOURHOODS", "LocalAttender", "local_attend", "local_attend_reference"]

Offsets = tuple[tuple[int, int], ...]


def _square(radius: int) -> Offsets:
    return tuple((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1))


#: Neighbourhood offsets ``(dy, dx)`` in the channel order of the released checkpoints: channel
#: ``k`` of the attender's logits weighs the value token at offset ``NEIGHBOURHOODS[n][k]``.
NEIGHBOURHOODS: dict[int, Offsets] = {
    5: ((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)),
    9: _square(1),
    13: (
        (-2, 0),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, 0),
    ),
    # The star used by every released model (paper Fig. 8, best in Table 7).
    17: (
        (-2, -2), (-2, 0), (-2, 2),
        (-1, -1), (-1, 0), (-1, 1),
        (0, -2), (0, -1), (0, 0), (0, 1), (0, 2),
        (1, -1), (1, 0), (1, 1),
        (2, -2), (2, 0), (2, 2),
    ),
    25: _square(2),
}  # fmt: skip


def _radius(offsets: Offsets) -> int:
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets)


def _check_shapes(weights: Tensor, value: Tensor, offsets: Offsets) -> int:
    """Validate the attend inputs and return the integer scale ``I = H_out / H_in``."""
    if weights.dim() != 4 or value.dim() != 4:
        raise ValueError(
            f"Local Attender expects 4-D NCHW tensors, got weights of shape {tuple(weights.shape)} "
            f"and value of shape {tuple(value.shape)}; add a batch dimension with `.unsqueeze(0)`."
        )
    if weights.shape[0] != value.shape[0]:
        raise ValueError(
            f"Local Attender: guide and value batch sizes differ ({weights.shape[0]} vs {value.shape[0]})."
        )
    if weights.shape[1] != len(offsets):
        raise ValueError(
            f"Local Attender: {weights.shape[1]} attention channels for a neighbourhood of {len(offsets)} offsets."
        )
    (h_out, w_out), (h, w) = weights.shape[-2:], value.shape[-2:]
    scale = h_out // h if h else 0
    if h == 0 or w == 0 or h_out % h or w_out % w or w_out // w != scale or scale < 1:
        raise ValueError(
            f"Local Attender: the guide's size {h_out}x{w_out} must be the value's size {h}x{w} times "
            f"one integer scale I (same I for height and width); got a non-integer or unequal scale. "
            f"Resize the guide to ({h}*I, {w}*I)."
        )
    return scale


def local_attend(weights: Tensor, value: Tensor, offsets: Offsets) -> Tensor:
    """Pool ``value`` with per-pixel neighbourhood ``weights`` (already normalised over offsets).

    Args:
        weights: ``[B, n, I*H, I*W]`` attention weights; channel ``k`` belongs to ``offsets[k]``.
        value: ``[B, C, H, W]`` low-resolution features.
        offsets: the ``n`` ``(dy, dx)`` offsets, in low-resolution tokens.

    Returns:
        ``[B, C, I*H, I*W]``: output pixel ``(h*I + i, w*I + j)`` is
        ``sum_k weights[k, h*I + i, w*I + j] * value[h + dy_k, w + dx_k]`` with replication padding.
    """
    scale = _check_shapes(weights, value, offsets)
    b, c, h, w = value.shape
    r = _radius(offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate")
    # View the output as [B, C, H, I, W, I] so that a low-res token broadcasts over its I x I cell:
    # each offset then costs one fused multiply-add over the output, with no temporaries.
    cells = weights.reshape(b, len(offsets), h, scale, w, scale)
    out = value.new_zeros((b, c, h, scale, w, scale), dtype=torch.promote_types(value.dtype, weights.dtype))
    for k, (dy, dx) in enumerate(offsets):
        shifted = padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
        out.addcmul_(shifted[:, :, :, None, :, None], cells[:, k : k + 1])
    return out.reshape(b, c, h * scale, w * scale)


def local_attend_reference(weights: Tensor, value: Tensor, offsets: Offsets) -> Tensor:
    """The straightforward formulation: stack all shifted copies, broadcast, multiply and sum.

    It materialises an ``[B, C, n, H, I, W, I]`` tensor (``n`` times the output), so it is kept only
    as the oracle for tests and the baseline in ``bench/local_attender.py``.
    """
    scale = _check_shapes(weights, value, offsets)
    b, c, h, w = value.shape
    r = _radius(offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate")
    shifted = torch.stack([padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w] for dy, dx in offsets], dim=2)
    cells = weights.reshape(b, 1, len(offsets), h, scale, w, scale)
    out = (shifted[:, :, :, :, None, :, None] * cells).sum(dim=2)
    return out.reshape(b, c, h * scale, w * scale)


class LocalAttender(nn.Module):
    """Upsample ``value`` by the integer factor ``guide.shape[-1] / value.shape[-1]``.

    The only learned part is a 1x1 convolution (with bias) from the guide to ``n`` logits; the
    guide's first ``n`` channels are added to the logits as a residual (zero-padded if the guide has
    fewer), as in the released models. The parameter is named ``conv1`` so that released
    checkpoints load unchanged.

    Args:
        guide_channels: channels of the high-resolution guide map.
        neighbourhood: ``n``, one of 5, 9, 13, 17 (released models) or 25.
    """

    def __init__(self, guide_channels: int, neighbourhood: int = 17) -> None:
        super().__init__()
        if neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(
                f"Local Attender neighbourhood must be one of {sorted(NEIGHBOURHOODS)}, got {neighbourhood}."
            )
        if guide_channels < 1:
            raise ValueError(f"Local Attender needs at least one guide channel, got {guide_channels}.")
        self.guide_channels = guide_channels
        self.offsets: Offsets = NEIGHBOURHOODS[neighbourhood]
        self.conv1 = nn.Conv2d(guide_channels, neighbourhood, kernel_size=1)

    @property
    def neighbourhood(self) -> int:
        return len(self.offsets)

    def attention(self, guide: Tensor) -> Tensor:
        """Per-pixel softmax weights over the neighbourhood, ``[B, n, H_out, W_out]``."""
        if guide.dim() != 4 or guide.shape[1] != self.guide_channels:
            raise ValueError(
                f"Local Attender expects a guide of shape [B, {self.guide_channels}, H_out, W_out], "
                f"got {tuple(guide.shape)}."
            )
        return add_channel_residual(guide, self.conv1(guide)).softmax(dim=1)

    def forward(self, guide: Tensor, value: Tensor) -> Tensor:
        """Return ``value`` upsampled to the guide's spatial size, ``[B, C_value, H_out, W_out]``."""
        return local_attend(self.attention(guide), value, self.offsets)

    def extra_repr(self) -> str:
        return f"guide_channels={self.guide_channels}, neighbourhood={self.neighbourhood}"
