"""Stable Diffusion 1.5 at 512 -> UPLiFT -> 1024 (paper Tables 2 and 3, appendix B.2), as a ``uplift test`` task.

``uplift test --config configs/t2i_coco.yaml`` (Table 2) or ``configs/t2i_relaion.yaml`` (Table 3) runs one diffusion
step count (``model.init_args.diffusion_steps``) over the prompts of :class:`~datamodules.prompts.PromptDataModule`:

- SD1.5 (``StableDiffusionPipeline``, float32, its default scheduler, guidance 7.5) generates the latents of 512x512
  images (``output_type="latent"``), each prompt's noise drawn from ``(seed, prompt index)``. Those latents are
  SCALED by the VAE's ``scaling_factor`` (0.18215); UPLiFT works on unscaled latents, so they are divided by it;
- the decoded 512 image (raw [0, 1]) guides ``steps`` (1) UPLiFT step(s) to 128x128 latents, decoded to 1024x1024
  and colour-corrected against the 512 image;
- rows: ``sd`` (the decoded 512 images) and ``uplift`` (the 1024 images). Metrics (:mod:`tasks.metrics`): FID against
  the reference images (at the output size) on CFM's truncated uint8, patch-FID of the 1024 images (4 random 512 crops
  per image, seeded per prompt), CLIP score (``openai/clip-vit-base-patch32``) against the prompt;
- latency, the paper's protocol: ``torch.compile`` (``compile``) of the UNet, the VAE decoder and UPLiFT, batch
  ``latency_batch_size`` (4 for COCO, 1 for reLAION), ``latency_warmup`` (3) warm-up batches, then the mean of
  ``latency_batches`` (10) batches, timed with ``torch.utils.benchmark.Timer`` (which synchronises CUDA and adds 2
  warm-up runs of its own per stage) separately for diffusion, the 512 decode and the upsampling (UPLiFT + 1024
  decode + colour correction).

Logged: ``test/sd/{fid,clip,s_per_image}``, ``test/uplift/{fid,pfid,clip,s_per_image,params}``,
``test/latency/{diffusion_s,decode_s,upsample_s}`` (seconds per image) and ``test/prompts``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import lightning as L
import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn
from torchmetrics import SumMetric

from tasks.common import item_seed
from tasks.metrics import CLIPSource, PretrainedCLIP, cfm_uint8, clip_score, crop_patches, frechet_distance, patch_anchors
from tasks.vae_uplift import SD15_REPO, SD15_VAE, build_uplift, build_vae
from uplift import UPLiFTConfig
from uplift.backbones import BackboneConfig
from uplift.errors import ConfigError, WeightsUnavailableError

__all__ = ["PipelineSource", "PretrainedPipeline", "TextToImageTask"]


class PipelineSource:
    """Where the diffusion pipeline comes from (``model.init_args.pipeline``): called with the task's
    ``AutoencoderKL``, returns a diffusers ``StableDiffusionPipeline`` around it."""

    def __call__(self, vae: nn.Module) -> Any:
        raise NotImplementedError


class PretrainedPipeline(PipelineSource):
    """``StableDiffusionPipeline.from_pretrained(name)`` in float32 with its default scheduler, no safety checker
    (only latents are generated); ``name``: a hub id or a local pipeline directory."""

    def __init__(self, name: str = SD15_REPO) -> None:
        self.name = name

    def __call__(self, vae: nn.Module) -> Any:
        from diffusers import StableDiffusionPipeline

        try:
            return StableDiffusionPipeline.from_pretrained(self.name, vae=vae, torch_dtype=torch.float32,
                                                           safety_checker=None, requires_safety_checker=False)
        except OSError as err:
            raise WeightsUnavailableError(
                f"Could not load Stable Diffusion {self.name!r} ({type(err).__name__}: "
                f"{(str(err).splitlines() or [''])[0]}). Download it where the hub is reachable (`hf download "
                f"{self.name}`) or pass `--model.init_args.pipeline.init_args.name /path/to/pipeline/dir`.") from err


class TextToImageTask(L.LightningModule):
    """Both rows of one diffusion step count (``uplift test``); nothing is trained.

    Args:
        pipeline: the diffusion pipeline (:class:`PretrainedPipeline`: SD1.5 from the hub; ``tasks.tiny.TinyPipeline``).
        vae, weights, uplift: the VAE and UPLiFT (as :class:`~tasks.superres.SuperResolutionTask`).
        diffusion_steps: denoising steps (Table 2: 25; Table 3: 25 and 40, one run each).
        guidance_scale: classifier-free guidance (diffusers' default 7.5).
        resolution: the generated image side (512); the output is ``resolution * 2**steps``.
        steps: UPLiFT 2x steps (1: 512 -> 1024).
        correct_colors: the paper's colour correction.
        fid, fid_feature, fid_weights, patch_size, patches_per_image: FID and patch-FID (as the SR task).
        clip: the CLIP score's model (:class:`~tasks.metrics.PretrainedCLIP`; ``null``: no CLIP score).
        compile, latency_batch_size, latency_warmup, latency_batches: the latency protocol (module docs);
            ``latency_batches: 0`` skips the timing.
        seed: seeds every prompt's diffusion noise, the patch-FID crops and UPLiFT's noise channels.
    """

    def __init__(
        self,
        pipeline: PipelineSource = lazy_instance(PretrainedPipeline),
        vae: BackboneConfig = SD15_VAE,
        weights: Optional[str] = "sd15-vae",
        uplift: Optional[UPLiFTConfig] = None,
        diffusion_steps: int = 25,
        guidance_scale: float = 7.5,
        resolution: int = 512,
        steps: int = 1,
        correct_colors: bool = True,
        fid: bool = True,
        fid_feature: Union[int, nn.Module] = 2048,
        fid_weights: Optional[str] = None,
        patch_size: int = 512,
        patches_per_image: int = 4,
        clip: Optional[CLIPSource] = lazy_instance(PretrainedCLIP),
        compile: bool = True,
        latency_batch_size: int = 4,
        latency_warmup: int = 3,
        latency_batches: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if diffusion_steps < 1 or steps < 1:
            raise ConfigError(f"diffusion_steps and steps must be positive, got {diffusion_steps} and {steps}.")
        self.diffusion_steps, self.guidance_scale = diffusion_steps, guidance_scale
        self.resolution, self.steps, self.output_size = resolution, steps, resolution * 2**steps
        self.correct_colors, self.seed, self.compile = correct_colors, seed, compile
        self.patch_size, self.patches_per_image = patch_size, patches_per_image
        self.latency_batch_size, self.latency_warmup, self.latency_batches = latency_batch_size, latency_warmup, latency_batches
        if fid and patches_per_image > 0 and patch_size > self.output_size:
            raise ConfigError(f"patch-FID crops of {patch_size} px do not fit {self.output_size} px images; lower "
                              f"model.init_args.patch_size.")

        # quick failures first (FID's and CLIP's weights), then the large models
        self.fid_sd = frechet_distance(fid_feature, fid_weights) if fid else None
        self.fid_uplift = frechet_distance(self.fid_sd.inception) if fid else None
        self.pfid_uplift = frechet_distance(self.fid_sd.inception) if fid and patches_per_image > 0 else None
        pair = clip() if clip is not None else None
        self.clip_sd = clip_score(pair) if pair is not None else None
        self.clip_uplift = clip_score(pair) if pair is not None else None
        self.prompts = SumMetric()

        self.vae = build_vae(vae, seed)
        self.uplift = build_uplift(self.vae, weights, uplift, seed)
        self.pipe = pipeline(self.vae.vae)
        self.pipe.set_progress_bar_config(disable=True)
        self.unet, self.text_encoder = self.pipe.unet, self.pipe.text_encoder  # submodules: Lightning moves them
        self._latency_prompts: list[str] = []

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[str], indices: Tensor) -> Tensor:
        """SD's latents for ``prompts`` at ``resolution``, UNSCALED (divided by the VAE's scaling factor); prompt i's
        noise comes from ``(seed, indices[i])`` alone (CPU generators: the same on every device)."""
        generators = [torch.Generator().manual_seed(item_seed(self.seed, int(i))) for i in indices]
        scaled = self.pipe(list(prompts), height=self.resolution, width=self.resolution,
                           num_inference_steps=self.diffusion_steps, guidance_scale=self.guidance_scale,
                           output_type="latent", generator=generators).images
        return scaled / self.vae.vae.config.scaling_factor

    @torch.no_grad()
    def upscale(self, latents: Tensor, image01: Tensor, first_index: int = 0) -> Tensor:
        """UPLiFT's ``output_size`` images in [0, 1] (unclamped) from unscaled latents and their decoded image."""
        from uplift.generative import upscale_latents

        with torch.random.fork_rng(devices=[latents.device] if latents.is_cuda else []):
            torch.manual_seed(item_seed(self.seed, first_index))  # UPLiFT's noise channels
            return upscale_latents(latents, image01, self.vae, self.uplift, self.steps, self.correct_colors, clamp=False)

    # ------------------------------------------------------------------ test
    def on_test_start(self) -> None:
        self.pipe.to(self.device)
        if self.compile:
            self.pipe.unet = torch.compile(self.pipe.unet)
            self.vae.vae.decoder = torch.compile(self.vae.vae.decoder)
            self.uplift = torch.compile(self.uplift)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        captions, indices = list(batch["caption"]), batch["index"]
        references = batch["reference"].float()
        if tuple(references.shape[-2:]) != (self.output_size, self.output_size):
            raise ConfigError(f"Reference images are {tuple(references.shape[-2:])}, the outputs {self.output_size} px "
                              f"(data.init_args.reference_size follows the task's resolution * 2**steps).")
        self._latency_prompts += captions[: self.latency_batch_size - len(self._latency_prompts)]
        latents = self.generate(captions, indices)
        low = self.vae.decode(latents, clamp=False)
        high = self.upscale(latents, low.clamp(0, 1), int(indices[0]))
        fake_low, fake_high = cfm_uint8(low * 2 - 1), cfm_uint8(high * 2 - 1)
        n = len(captions)
        self.prompts.update(n)
        logged: dict[str, Any] = {"test/prompts": self.prompts}
        if self.fid_sd is not None:
            real = cfm_uint8(references)
            for metric, fake in ((self.fid_sd, fake_low), (self.fid_uplift, fake_high)):
                metric.update(real, real=True)
                metric.update(fake, real=False)
            logged.update({"test/sd/fid": self.fid_sd, "test/uplift/fid": self.fid_uplift})
            if self.pfid_uplift is not None:
                anchors = patch_anchors(indices, self.output_size, self.output_size, self.patch_size,
                                        self.patches_per_image, self.seed)
                self.pfid_uplift.update(crop_patches(real, anchors, self.patch_size), real=True)
                self.pfid_uplift.update(crop_patches(fake_high, anchors, self.patch_size), real=False)
                logged["test/uplift/pfid"] = self.pfid_uplift
        if self.clip_sd is not None:
            self.clip_sd.update(fake_low, captions)
            self.clip_uplift.update(fake_high, captions)
            logged.update({"test/sd/clip": self.clip_sd, "test/uplift/clip": self.clip_uplift})
        self.log_dict(logged, batch_size=n)

    def on_test_epoch_end(self) -> None:
        self.log("test/uplift/params", float(sum(p.numel() for p in self.uplift.parameters())))
        if self.latency_batches <= 0 or not self._latency_prompts:
            return
        latency = self.measure_latency()
        sd = latency["diffusion_s"] + latency["decode_s"]
        values = {f"test/latency/{k}": v for k, v in latency.items()}
        values.update({"test/sd/s_per_image": sd, "test/uplift/s_per_image": sd + latency["upsample_s"]})
        self.log_dict(values, sync_dist=True)

    @torch.no_grad()
    def measure_latency(self) -> dict[str, float]:
        """Seconds per image of each stage (the module docs' protocol)."""
        from torch.utils.benchmark import Timer

        prompts = [self._latency_prompts[i % len(self._latency_prompts)] for i in range(self.latency_batch_size)]
        indices = torch.arange(len(prompts))
        for _ in range(self.latency_warmup):
            latents = self.generate(prompts, indices)
            image = self.vae.decode(latents)
            self.upscale(latents, image)
        latents = self.generate(prompts, indices)
        image = self.vae.decode(latents)
        stages = {"diffusion_s": lambda: self.generate(prompts, indices), "decode_s": lambda: self.vae.decode(latents),
                  "upsample_s": lambda: self.upscale(latents, image)}
        threads = torch.get_num_threads()  # Timer would otherwise time on one CPU thread
        return {name: Timer("stage()", globals={"stage": stage}, num_threads=threads).timeit(self.latency_batches).mean
                / len(prompts) for name, stage in stages.items()}
