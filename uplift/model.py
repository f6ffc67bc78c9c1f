"""The UPLiFT upsampler: dense image encoder, one shared 2x decoder, Local Attender, optional refiner.

Inference (paper Fig. 3): the encoder runs once on the image and keeps full pixel density; every
2x step nearest-resizes its outputs to the step's resolution to guide the decoder, whose output is
the Local Attender's guide for pooling the step's input features. The same decoder weights serve
every step, so K steps upsample by 2^K.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from uplift.attender import LocalAttender, attend_padded, neighbourhood_radius, padded_window
from uplift.blocks import BlockGroup, UpBlock, add_channel_residual
from uplift.config import UPLiFTConfig
from uplift.inputs import check_upsampler_inputs
from uplift.noise import Noise
from uplift.resample import Crop, Span, nearest_crop, resize_bilinear
from uplift.tiling import Reach, attend_span, step_input_span

if TYPE_CHECKING:
    from uplift.tiling import Box

__all__ = ["UPLiFT", "DenseEncoder", "Decoder"]

StepOutput = Union[Tensor, list[Tensor]]
Window = tuple[Span, Span]  # rows and columns, in whole-map indices



def _append_noise(x: Tensor, channels: int, scale: float, noise: Optional[Noise], crop: Crop, stage: int) -> Tensor:
    if channels <= 0:
        return x
    noise = noise if noise is not None else Noise.draw()
    sample = noise.sample(x.shape[0], channels, crop, tuple(x.shape[-2:]), stage, x.dtype, x.device)
    return torch.cat([x, sample * scale], dim=1)


def _whole(crop: Crop, x: Tensor, scale: int = 1) -> Window:
    """The rows and columns of the ``scale``-times map covered by the crop ``x`` at ``crop``."""
    return (Span(scale * crop.top, scale * (crop.top + x.shape[-2])),
            Span(scale * crop.left, scale * (crop.left + x.shape[-1])))


class DenseEncoder(nn.Module):
    """Shallow image encoder without downsampling; returns every group's output (full resolution)."""

    def __init__(self, config: UPLiFTConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.out_channels: list[int] = []
        for i, group in enumerate(config.encoder):
            self.add_module(f"block_{i}", BlockGroup(in_channels, group.widths, group.block, config.norm))
            in_channels = group.widths[-1]
            self.out_channels.append(in_channels)

    def forward(self, image: Tensor, last_stride: int = 1, keep: Optional[set[int]] = None) -> list[Optional[Tensor]]:
        """Every group's output (None for those not in ``keep``, freed as soon as the next group ran).

        ``last_stride`` > 1: the last group's output only at every ``last_stride``-th pixel, all the
        decoder reads of it when no step runs at the encoder's resolution (see ``ConvBlock``)."""
        outputs: list[Optional[Tensor]] = []
        x = image
        last = len(self.out_channels) - 1
        for i in range(len(self.out_channels)):
            x = getattr(self, f"block_{i}")(x, last_stride if i == last else 1)
            outputs.append(x if keep is None or i in keep or i - len(self.out_channels) in keep else None)
        return outputs


class Decoder(nn.Module):
    """One 2x step: blocks at low res, transposed conv, blocks at high res; its output is the guide."""

    def __init__(self, config: UPLiFTConfig, encoder_channels: list[int]) -> None:
        super().__init__()
        self.noise_channels, self.noise_scale = config.noise_channels, config.noise_scale
        in_low = config.feature_channels + encoder_channels[-1] + config.noise_channels
        self.block_0 = BlockGroup(in_low, config.decoder_low.widths, config.decoder_low.block, config.norm)
        self.up_1 = UpBlock(self.block_0.out_channels)
        in_high = self.block_0.out_channels + encoder_channels[-2] + config.noise_channels
        self.block_1 = BlockGroup(in_high, config.decoder_high.widths, config.decoder_high.block, config.norm)
        self.out_channels = self.block_1.out_channels

    def _guided(self, x: Tensor, crop: Crop, guide: Tensor, guide_crop: Crop, noise: Optional[Noise], stage: int) -> Tensor:
        x = torch.cat([x, nearest_crop(guide, guide_crop, crop, tuple(x.shape[-2:]))], dim=1)
        return _append_noise(x, self.noise_channels, self.noise_scale, noise, crop, stage)

    def low(self, x: Tensor, encoder_outputs: list[Tensor], crop: Crop, encoder_crops: list[Crop],
            noise: Optional[Noise]) -> Tensor:
        """The blocks at the input resolution, on all of ``x``'s crop."""
        return self.block_0(self._guided(x, crop, encoder_outputs[-1], encoder_crops[-1], noise, Noise.DECODER_LOW))

    def high(self, low: Tensor, encoder_outputs: list[Tensor], crop: Crop, encoder_crops: list[Crop],
             noise: Optional[Noise], out: Window) -> Tensor:
        """The up-block and the blocks at the output resolution, for the output rows and columns ``out``
        only, from :meth:`low`'s output on ``crop``."""
        high = crop.doubled()
        rows, cols = out
        reach = self.block_1.radius
        up_rows, up_cols = rows.grow(reach).clip(high.height), cols.grow(reach).clip(high.width)
        x = self.up_1(low, crop, up_rows, up_cols)
        up_crop = Crop(up_rows.start, up_cols.start, high.height, high.width)
        x = self.block_1(self._guided(x, up_crop, encoder_outputs[-2], encoder_crops[-2], noise, Noise.DECODER_HIGH))
        return x if (rows, cols) == (up_rows, up_cols) else x[..., rows.slice(up_rows.start), cols.slice(up_cols.start)]

    def forward(self, x: Tensor, encoder_outputs: list[Tensor], crop: Optional[Crop] = None,
                encoder_crops: Optional[list[Crop]] = None, noise: Optional[Noise] = None,
                out: Optional[Window] = None) -> Tensor:
        """The guide on ``out`` (rows, columns of the 2x map; default all that ``x`` covers).

        ``crop``/``encoder_crops``: where ``x`` and the encoder outputs sit in their whole maps (default:
        they are whole). On a crop, outputs within the decoder's reach of a cut edge are wrong; the caller
        (``uplift.tiling``) plans crops so that ``out`` stays clear of them.
        """
        crop = Crop.whole(x) if crop is None else crop
        encoder_crops = [Crop.whole(e) for e in encoder_outputs] if encoder_crops is None else encoder_crops
        out = _whole(crop, x, 2) if out is None else out
        return self.high(self.low(x, encoder_outputs, crop, encoder_crops, noise), encoder_outputs, crop,
                         encoder_crops, noise, out)


class UPLiFT(nn.Module):
    """UPLiFT feature upsampler.

    Call it as ``model(image, features, steps=K)`` with the image the backbone saw (normalised the
    way the backbone normalises it, or raw [0, 1] for ``raw_image_guide`` models) and the backbone's
    ``[B, C, H/p, W/p]`` feature grid. Module and parameter names follow the reference release, so
    its ``.safetensors`` checkpoints load unchanged (see :meth:`from_official`).
    """

    def __init__(self, config: Optional[UPLiFTConfig] = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else UPLiFTConfig()
        self.encoder = DenseEncoder(config)
        self.decoder = Decoder(config, self.encoder.out_channels)
        # "No LA" (neighbourhood None, the release's attender -1): the decoder ends in a 1x1 conv to the
        # feature channels plus a channel residual (the release's residual_outc), named as the release names it
        self.attender: Optional[LocalAttender] = None
        if config.neighbourhood is None:
            self.decoder.outc = nn.Conv2d(self.decoder.out_channels, config.feature_channels, kernel_size=1)
        else:
            self.attender = LocalAttender(self.decoder.out_channels, config.neighbourhood)
        self.is_fast = False  # set by uplift.fast.make_fast
        self.reach = Reach.of(config)  # receptive field of every stage, for tiling
        # encoder outputs the decoder and refiner read (Python indices, may be negative)
        self.encoder_reads = {-1, -2} | ({config.refiner.encoder_group} if config.refiner is not None else set())
        self.refiner: Optional[BlockGroup] = None
        self.ref_outc: Optional[nn.Conv2d] = None
        if config.refiner is not None:
            ref = config.refiner
            in_ref = config.feature_channels + self.encoder.out_channels[ref.encoder_group] + ref.noise_channels
            self.refiner = BlockGroup(in_ref, ref.widths, "single", config.norm)
            self.ref_outc = nn.Conv2d(ref.widths[-1], config.feature_channels, kernel_size=1)

    # ------------------------------------------------------------------ inference
    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def feature_channels(self) -> int:
        return self.config.feature_channels

    def encode_image(self, image: Tensor) -> list[Tensor]:
        """Run the dense encoder once. For p not a power of two (14) the image is first resized by
        2^ceil(log2 p) / p (448 -> 512 for p = 14) so that 2x steps land on whole pixels."""
        pixels_per_token = 1 << self.config.native_steps
        if pixels_per_token != self.patch_size:
            h, w = image.shape[-2:]
            size = (h * pixels_per_token // self.patch_size, w * pixels_per_token // self.patch_size)
            image = resize_bilinear(image, size)
        return self.encoder(image)

    def step_input_span(self, out: Span, low_size: int) -> Span:
        """The input rows (or columns) :meth:`step` needs on a crop for output rows ``out`` (see
        :func:`uplift.tiling.step_input_span`); ``low_size``: the whole input map's size."""
        return step_input_span(self.reach, out, low_size)

    def step(self, features: Tensor, encoder_outputs: list[Tensor], crop: Optional[Crop] = None,
             encoder_crops: Optional[list[Crop]] = None, noise: Optional[Noise] = None,
             out: Optional[Window] = None, decoded: Optional[Tensor] = None) -> Tensor:
        """One 2x upsampling step of ``features`` guided by the encoder outputs.

        By default everything is whole. ``uplift.tiling`` calls it on crops: ``crop`` and
        ``encoder_crops`` say where the inputs sit in their whole maps, ``out`` which rows and columns
        of the whole 2x map to return (they must be far enough from the crop's cut edges), and
        ``decoded`` is the decoder's :meth:`Decoder.low` output on the crop when the caller computes
        one crop's output in several windows.
        """
        crop = Crop.whole(features) if crop is None else crop
        encoder_crops = [Crop.whole(e) for e in encoder_outputs] if encoder_crops is None else encoder_crops
        high = crop.doubled()
        whole = _whole(crop, features, 2)
        rows, cols = whole if out is None else out
        ref = self.config.refiner
        att_rows, att_cols = attend_span(rows, self.reach.refiner, high.height), attend_span(cols, self.reach.refiner, high.width)
        if decoded is None:
            decoded = self.decoder.low(features, encoder_outputs, crop, encoder_crops, noise)
        guide = self.decoder.high(decoded, encoder_outputs, crop, encoder_crops, noise, (att_rows, att_cols))
        if self.attender is None:
            x = add_channel_residual(guide, self.decoder.outc(guide))
        elif crop.is_whole(features) and (att_rows, att_cols) == whole:
            x = self.attender(guide, features)
        else:
            r = neighbourhood_radius(self.attender.offsets)
            window = padded_window(features, crop, att_rows.halved(), att_cols.halved(), r)
            x = attend_padded(self.attender.attention(guide), window, self.attender.offsets, self.attender.impl)
        if self.refiner is not None:
            att_crop = Crop(att_rows.start, att_cols.start, high.height, high.width)
            guide = nearest_crop(encoder_outputs[ref.encoder_group], encoder_crops[ref.encoder_group], att_crop,
                                 tuple(x.shape[-2:]))
            x = _append_noise(torch.cat([x, guide], dim=1), ref.noise_channels, ref.noise_scale, noise, att_crop,
                              Noise.REFINER)
            x = self.ref_outc(self.refiner(x))
        if (rows, cols) == (att_rows, att_cols):
            return x
        return x[..., rows.slice(att_rows.start), cols.slice(att_cols.start)]

    def forward(
        self,
        image: Tensor,
        features: Tensor,
        steps: Optional[int] = None,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
        tile: Optional[int] = None,
    ) -> StepOutput:
        """Upsample ``features`` by 2^steps.

        Args:
            image: ``[B, 3, H, W]`` with H and W multiples of the patch size p.
            features: ``[B, C, H/p, W/p]`` backbone features.
            steps: number of 2x steps; default ceil(log2 p), i.e. at least one feature per pixel.
            output_size: ``(height, width)``: bilinearly resize the last step to this size (e.g.
                ``image.shape[-2:]`` for exactly pixel-dense features with p = 14).
            return_all_steps: return the list of all step outputs instead of the last one.
            tile: compute the output in tiles of ``tile`` x ``tile`` feature tokens, each from a crop
                of the inputs with the model's receptive field around it: the same result, with the
                memory of one tile beside the output (:mod:`uplift.tiling`; None: untiled).
        """
        steps = self.config.native_steps if steps is None else steps
        steps, output_size, tile = self.check_inputs(image, features, steps, output_size, return_all_steps, tile)
        if tile is not None or (self.is_fast and not return_all_steps):
            from uplift.tiling import upsample

            return upsample(self, image, features, steps, output_size, tile)
        noise = Noise.draw() if self.has_noise else None
        encoder_outputs = self.encode_image(image)
        outputs = []
        x = features
        for _ in range(steps):
            x = self.step(x, encoder_outputs, noise=noise)
            outputs.append(x)
        if return_all_steps:
            return outputs
        if output_size is not None:
            x = resize_bilinear(x, tuple(output_size))
        return x

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype of the weights (the inputs' dtype must match it outside autocast)."""
        return next(self.parameters()).dtype

    def check_inputs(
        self,
        image: Tensor,
        features: Tensor,
        steps: int,
        output_size: Optional[Sequence[int]] = None,
        return_all_steps: bool = False,
        tile: Optional[int] = None,
    ) -> tuple[int, Optional[tuple[int, int]], Optional[int]]:
        """Raise one ``ValueError`` naming the problem and the fix for inputs the model cannot use
        (:func:`uplift.inputs.check_upsampler_inputs`); return ``(steps, output_size, tile)`` as Python ints.
        The NaN/inf check of a :meth:`fast` model on GPU is asserted on the device (no host sync per call;
        the error surfaces at the next sync)."""
        return check_upsampler_inputs(
            "UPLiFT", image, features, patch=self.patch_size, channels=self.feature_channels,
            weights=self.weights_dtype, steps=steps, output_size=output_size, return_all_steps=return_all_steps,
            tile=tile, assert_finite_async=self.is_fast and features.device.type != "cpu",
        )

    def iter_tiles(
        self,
        image: Tensor,
        features: Tensor,
        steps: Optional[int] = None,
        tile: int = 32,
        output_size: Optional[Sequence[int]] = None,
    ) -> Iterator[tuple["Box", Tensor]]:
        """Yield ``(box, features)`` per output tile, in raster order, for outputs too big to hold at once.

        ``box`` (:class:`uplift.tiling.Box`) is where the tile's ``[B, C, box.height, box.width]`` features
        sit in the output of ``model(image, features, steps, output_size)``, which they equal exactly.
        Tiles are ``tile`` x ``tile`` feature tokens (the last row and column may be smaller); each is
        computed from a crop of the inputs, so memory is that of one tile, whatever the image size. A loop
        ``for box, part in model.iter_tiles(...)`` keeps ``part`` alive while the next tile is computed (two
        tiles at once); ``del part`` at the end of the loop body keeps it to one.
        """
        from uplift.tiling import iter_tiles

        steps = self.config.native_steps if steps is None else steps
        steps, output_size, tile = self.check_inputs(image, features, steps, output_size, tile=tile)
        return iter_tiles(self, image, features, steps, output_size, tile)

    # ------------------------------------------------------------------ fast inference
    def fast(self) -> "UPLiFT":
        """An inference-only copy of this model that computes the same outputs faster, in less memory.

        BatchNorm folded into the convolutions, in-place ReLU, channels-last weights, the last encoder
        group evaluated only where the decoder reads it, the last step in row bands straight into the
        output (and its resize), no host-device sync per call; ``torch.compile`` traces it without graph
        breaks. This model is unchanged. See :mod:`uplift.fast`.
        """
        from uplift.fast import make_fast

        return make_fast(self)

    def train(self, mode: bool = True) -> "UPLiFT":
        if mode and self.is_fast:
            raise ValueError("A model made by UPLiFT.fast() is inference-only (its BatchNorm is folded away); "
                             "train the original model and call .fast() again.")
        return super().train(mode)

    @property
    def has_noise(self) -> bool:
        """Whether the model appends noise channels (the VAE model)."""
        ref = self.config.refiner
        return self.config.noise_channels > 0 or (ref is not None and ref.noise_channels > 0)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_official(cls, weights: Union[str, Path, dict[str, Tensor]], config: Union[str, Path, dict[str, Any]],
                      fast: bool = False) -> "UPLiFT":
        """Build the model of a reference-release checkpoint: ``.safetensors`` path (or state dict)
        and the release's YAML config (path or dict with sections ``backbone`` and ``uplift``, or a preset name).
        ``fast``: return its :meth:`fast` inference copy."""
        from uplift.checkpoints import load_official

        model = load_official(weights, config)
        return model.fast() if fast else model

    @classmethod
    def from_pretrained(cls, reference: Union[str, Path], fast: bool = False, **kwargs: Any) -> "UPLiFT":
        """Any weights reference (:func:`uplift.checkpoints.load_uplift`): a released name (``dinov2-s14``,
        ``dinov3-splus16``, ``sd15-vae``; downloaded from the Hugging Face hub), a :meth:`save_pretrained` folder,
        a ``.safetensors`` file (``config=`` for a bare release file) or a ``uplift fit`` ``.ckpt``.
        ``fast``: return its :meth:`fast` inference copy."""
        from uplift.checkpoints import load_uplift

        model = load_uplift(reference, **kwargs)
        return model.fast() if fast else model

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        from uplift.checkpoints import save_pretrained

        if self.is_fast:
            raise ValueError("A model made by UPLiFT.fast() has its BatchNorm folded away, so its weights are not "
                             "a checkpoint; save the original model (fast() leaves it unchanged).")
        return save_pretrained(self, directory)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"feature_channels={self.feature_channels}, patch_size={self.patch_size}, "
            f"native_steps={self.config.native_steps}, params={self.num_parameters():,}"
        )

