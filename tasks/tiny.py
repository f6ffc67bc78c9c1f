"""Tiny random stand-ins for the large pretrained models of the generative evaluations, for ``SCALE=tiny`` (and the
tests): the whole pipeline runs offline on a CPU in seconds, and every number it gives is MEANINGLESS.

- :class:`TinyFIDFeatures`: a small random conv net in place of FID's Inception-v3 (uint8 images in, as Inception);
- :class:`TinyPipeline`: SD1.5's ``StableDiffusionPipeline`` class around a tiny random UNet and CLIP text encoder,
  with a real byte-level ``CLIPTokenizer`` built in memory (:func:`tiny_tokenizer`), sharing the task's (tiny) VAE;
- :class:`TinyCLIP`: a tiny random transformers CLIP and its processor, for the CLIP score.

The tiny VAE and UPLiFT are plain configs (a random ``AutoencoderKL`` and ``UPLiFTConfig``), in
``tests/conf/pieces/``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tasks.metrics import CLIPSource
from tasks.text2image import PipelineSource

__all__ = ["TinyCLIP", "TinyFIDFeatures", "TinyPipeline", "tiny_tokenizer"]


class TinyFIDFeatures(nn.Module):
    """16 random features of uint8 ``[B, 3, H, W]`` images (a fixed, seeded conv net): FID's Inception at toy size."""

    num_features = 16  # torchmetrics reads it instead of running a dummy image

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)])
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self.requires_grad_(False)

    def forward(self, images_u8: Tensor) -> Tensor:
        x = images_u8.float() / 255
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def tiny_tokenizer():
    """A real ``CLIPTokenizer`` built offline: byte-level vocabulary (every byte symbol, with and without
    CLIP's ``</w>`` word end), no merges, so every word is spelled out byte by byte."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(vocab_size: int, hidden: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=2,
                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)


class TinyPipeline(PipelineSource):
    """SD1.5's pipeline class (and scheduler config) around a tiny random UNet and text encoder, seeded with ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, vae: nn.Module) -> Any:
        from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tokenizer = tiny_tokenizer()
            text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tokenizer), 32)))
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=4)
        # SD1.5's scheduler_config.json
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                                  steps_offset=1, set_alpha_to_one=False)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)


class TinyCLIP(CLIPSource):
    """A tiny random transformers CLIP (32 px, patch 8) and its processor, seeded with ``seed``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self) -> tuple[nn.Module, Any]:
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        tokenizer = tiny_tokenizer()
        config = CLIPConfig(text_config=_text_config(len(tokenizer), 16), projection_dim=16,
                            vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                               num_hidden_layers=1, image_size=32, patch_size=8))
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = CLIPModel(config)
        return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
