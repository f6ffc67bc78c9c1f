"""Every row of Table 1 behind one interface: ``upsampler(image, features, output_size) -> features``.

``image`` is the backbone-normalised image the features were computed from (``[B, 3, H, W]``),
``features`` the backbone grid (``[B, C, h, w]``) and the result is ``[B, C, *output_size]``.
Upsamplers are chosen in YAML by class path, e.g.::

    upsampler:
      class_path: uplift.upsamplers.UPLiFTUpsampler
      init_args: {weights: dinov2-s14}

The published peers run their own code, each called with its own signature:

* AnyUp, LoftUp and FeatUp (JBU) through ``torch.hub.load``, from their GitHub repositories (which runs
  those repositories' code: only with ``trust_repo: true`` on the row, or when torch.hub already trusts
  them) or from a local checkout (``repo: /path/to/checkout``, ``source: local``);
* JAFAR, which has no ``hubconf.py``, from a local checkout of its repository (``repo: /path/to/JAFAR``)
  and its released weights file.

When their code or weights cannot be had, :class:`UpsamplerUnavailableError` names the way out and the
Table 1 driver reports that row as unavailable.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uplift.errors import UpsamplerUnavailableError, WeightsError
from uplift.resample import resize_bilinear

if TYPE_CHECKING:
    from uplift.backbones import Backbone

__all__ = [
    "Upsampler",
    "Nearest",
    "Bilinear",
    "UPLiFTUpsampler",
    "PeerUpsampler",
    "TorchHubUpsampler",
    "UpsamplerUnavailableError",
    "JAFAR",
    "AnyUp",
    "LoftUp",
    "FeatUpJBU",
]




class Upsampler(nn.Module):
    """Base class. Subclasses implement :meth:`upsample`; ``forward`` validates and resizes."""

    #: shown in tables
    label: str = "upsampler"

    def forward(self, image: Tensor, features: Tensor, output_size: Sequence[int]) -> Tensor:
        if features.dim() != 4 or image.dim() != 4:
            raise ValueError(f"expected [B, 3, H, W] image and [B, C, h, w] features, got {tuple(image.shape)} "
                             f"and {tuple(features.shape)}.")
        size = (int(output_size[0]), int(output_size[1]))
        out = self.upsample(image, features, size)
        if tuple(out.shape[-2:]) != size:  # over-upsampled (e.g. 16x on a patch-14 grid): resize down
            out = resize_bilinear(out, size)
        return out

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        raise NotImplementedError

    def own_backbone(self) -> Optional["Backbone"]:
        """The backbone whose features this row must upsample, or ``None`` (the default): the task's configured
        backbone. A row trained on another release of the backbone (LoftUp on the original DINOv2) returns it,
        and the probe tasks compute the features, the CLS token and the normalised image with it instead."""
        return None

    def check_backbone(self, backbone: "Backbone") -> None:
        """Raise one ``ValueError`` when this row cannot upsample ``backbone``'s features (default: it can)."""

    def num_parameters(self) -> int:
        """Parameters of the upsampler itself; a backbone the row brings is not counted (Table 1's column)."""
        own = self.own_backbone()
        skip = {id(p) for p in own.parameters()} if own is not None else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


class Nearest(Upsampler):
    label = "Nearest"

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return F.interpolate(features, size=output_size, mode="nearest")


class Bilinear(Upsampler):
    label = "Bilinear"

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return F.interpolate(features, size=output_size, mode="bilinear", align_corners=False)


class UPLiFTUpsampler(Upsampler):
    """UPLiFT from any weights reference (:func:`uplift.checkpoints.load_uplift`): released weights
    (``dinov2-s14``, ...), a ``save_pretrained`` directory, a ``.safetensors`` file (``config`` for a bare
    release file) or a ``uplift fit`` checkpoint (``.ckpt`` of the predictive task). Runs ``steps`` 2x steps (default:
    enough for one feature per pixel) and resizes to the requested size (16x on patch 14 then
    bilinear down to 448, as the paper does)."""

    label = "UPLiFT"

    def __init__(self, weights: str = "dinov2-s14", steps: Optional[int] = None, config: Optional[str] = None) -> None:
        from uplift.checkpoints import load_uplift

        super().__init__()
        self.weights, self.steps = weights, steps
        self.model = load_uplift(weights, config=config)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(image, features, steps=self.steps)


# ------------------------------------------------------------------------------------------ the published peers


class PeerUpsampler(Upsampler):
    """A published upsampler run with its own code.

    Each subclass names the code it was written against (``code``: repository and commit whose call signature
    and image normalisation it follows) and the feature channels its released DINOv2-S/14 weights take
    (``feature_channels``; ``None``: any, as AnyUp). Every peer was trained on images normalised with the
    ImageNet mean and std, which is what the DINOv2 backbones' ``normalize`` gives the interface's ``image``;
    :meth:`check_backbone` refuses a backbone with another normalisation or channel count rather than feed the
    peer inputs it was not trained on.
    """

    code: str = ""
    feature_channels: Optional[int] = 384

    def check_backbone(self, backbone: "Backbone") -> None:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        problems = []
        if self.feature_channels is not None and backbone.feature_channels != self.feature_channels:
            problems.append(f"its weights take {self.feature_channels}-channel features, the backbone gives "
                            f"{backbone.feature_channels}")
        imagenet = torch.tensor([IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD])
        if not torch.allclose(torch.tensor([backbone.mean, backbone.std]), imagenet, atol=1e-3):
            problems.append(f"it takes images normalised with the ImageNet mean {IMAGENET_DEFAULT_MEAN} and std "
                            f"{IMAGENET_DEFAULT_STD}, the backbone normalises with {backbone.mean} and {backbone.std}")
        if problems:
            name = getattr(backbone, "name", type(backbone).__name__)
            raise ValueError(f"{self.label} cannot upsample the features of backbone {name!r}: {'; '.join(problems)}. "
                             f"Its Table 1 weights are for DINOv2-S/14 (`vit_small_patch14_dinov2.lvd142m`).")


def _hub_load(label: str, repo: str, entry: str, *, source: str, trust_repo: bool, needs: str, **kwargs: Any) -> nn.Module:
    """``torch.hub.load`` with the row's explicit trust decision, or :class:`UpsamplerUnavailableError`.

    Not opted in, ``trust_repo="check"`` lets torch.hub load only a repository it already trusts (and ask on
    the terminal, or refuse when nobody can answer, otherwise); ``trust_repo=True`` is passed only when the row
    says ``trust_repo: true``. A local checkout is the user's own choice of code: torch.hub asks nothing for it.
    """
    if source not in ("github", "local"):
        raise ValueError(f"{label}: source must be 'github' or 'local', got {source!r}.")
    trust: dict[str, Any] = {"trust_repo": True if trust_repo else "check"} if source == "github" else {}
    if source == "local":
        repo = str(Path(repo).expanduser())
        if not (Path(repo) / "hubconf.py").is_file():
            raise UpsamplerUnavailableError(f"{label} is unavailable: {repo} is not a checkout with a hubconf.py "
                                            f"(`source: local` wants `repo:` to be the path of a clone of its repository).")
    try:
        return torch.hub.load(repo, entry, source=source, **trust, **kwargs)
    except Exception as err:  # untrusted, offline, missing dependency, ...: the row is unavailable
        first = str(err).splitlines()[0] if str(err) else ""
        lines = [f"{label} is unavailable: torch.hub.load({repo!r}, {entry!r}) failed ({type(err).__name__}: {first})"
                 + ("; without `trust_repo: true` on the row torch.hub runs only repositories it already trusts."
                    if source == "github" and not trust_repo else ".")]
        if source == "github":
            lines.append(f"`trust_repo: true` runs the code of github.com/{repo.split(':')[0]} (torch.hub.load(..., "
                         f"trust_repo=True)); or clone it, review it and set `repo: /path/to/clone` and `source: local`.")
        lines.append(f"The row needs the peer's code and weights (network access once, then torch.hub's cache in "
                     f"{torch.hub.get_dir()}); its code needs {needs}.")
        raise UpsamplerUnavailableError("\n".join(lines)) from err


class TorchHubUpsampler(PeerUpsampler):
    """A peer loaded with ``torch.hub.load(repo, entry, **kwargs)``; subclasses call the module their own way.

    Args (of every subclass):
        repo: ``owner/name`` on GitHub (``owner/name:ref`` pins a branch or tag), or with ``source: local`` the
            path of a local checkout of the repository.
        source: ``github`` (default) or ``local``, as ``torch.hub.load``'s own argument.
        trust_repo: ``source: github`` downloads the repository and RUNS ITS CODE (its ``hubconf.py`` and what
            that imports). ``false`` (default): only if torch.hub already trusts the repository (you trusted it
            before, or it is in torch.hub's cache), otherwise torch.hub asks on the terminal or refuses and the
            row is unavailable with an error naming this option; ``true``: trust it (and add it to torch.hub's
            trusted list). Irrelevant for a local checkout, which is your own choice of code.
        hub_kwargs: extra keyword arguments for the hub entry.
    """

    entry: str = ""
    entry_kwargs: dict[str, Any] = {}
    needs: str = "only torch"

    def __init__(self, repo: str, source: str = "github", trust_repo: bool = False,
                 hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.repo, self.source, self.trust_repo = repo, source, trust_repo
        self.model = _hub_load(self.label, repo, self.entry, source=source, trust_repo=trust_repo, needs=self.needs,
                               **{**self.entry_kwargs, **(hub_kwargs or {})})
        self.model.eval().requires_grad_(False)


class AnyUp(TorchHubUpsampler):
    """AnyUp, the paper's model (hub entry ``anyup``: trained on DINOv2-S/14, windowed attention without NATTEN).

    Follows ``wimmerth/anyup`` at 351807a: ``model(image, features, output_size=(H, W))`` with the
    ImageNet-normalised image at any size; the result has ``output_size``.
    """

    label = "AnyUp"
    code = "wimmerth/anyup@351807a9c4287368732cc247f26c7c81c9139af4"
    feature_channels = None  # backbone-agnostic
    entry = "anyup"
    needs = "only torch (weights: the repository's GitHub release)"

    def __init__(self, repo: str = "wimmerth/anyup", source: Literal["github", "local"] = "github",
                 trust_repo: bool = False, hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__(repo, source, trust_repo, hub_kwargs)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(image, features, output_size=output_size)


class LoftUp(TorchHubUpsampler):
    """LoftUp for DINOv2-S/14 (hub entry ``loftup_dinov2s``, weights ``haiwen/loftup-dinov2s`` on the HF hub).

    Follows ``andrehuang/loftup`` at 6620d9b: ``model(features, image)`` returns features at the image's
    size, so the ImageNet-normalised guidance image is resized to ``output_size`` first (Table 1: it already is).

    Args:
        backbone: ``original`` (default; Table 1 and Table 5's "Orig Backbone"): LoftUp was trained on the
            original DINOv2 release, so the row brings it (``torch.hub.load(backbone_repo, 'dinov2_vits14')``)
            and the probe tasks take the features from it instead of their configured backbone. ``task``: the
            task's configured backbone (timm's DINOv2-S/14 in the Table 1 configs: Table 5's "HF Backbone").
        backbone_repo, backbone_source: where the original DINOv2 comes from: ``facebookresearch/dinov2`` on
            GitHub (an owner torch.hub trusts by default) or a local checkout. ``trust_repo`` applies to it too.
        repo, source, trust_repo, hub_kwargs: see :class:`TorchHubUpsampler`.
    """

    code = "andrehuang/loftup@6620d9bcde4c1af5cddedde6b9aaed6d4174a799"
    entry = "loftup_dinov2s"
    entry_kwargs = {"pretrained": True}
    needs = "einops, matplotlib and huggingface_hub (weights: haiwen/loftup-dinov2s on the Hugging Face hub)"

    def __init__(self, backbone: Literal["original", "task"] = "original", repo: str = "andrehuang/loftup",
                 source: Literal["github", "local"] = "github", trust_repo: bool = False,
                 hub_kwargs: Optional[dict[str, Any]] = None, backbone_repo: str = "facebookresearch/dinov2",
                 backbone_source: Literal["github", "local"] = "github") -> None:
        if backbone not in ("original", "task"):
            raise ValueError(f"LoftUp: backbone must be 'original' or 'task', got {backbone!r}.")
        self.label = "LoftUp" if backbone == "original" else "LoftUp (task backbone)"
        super().__init__(repo, source, trust_repo, hub_kwargs)
        self.which_backbone = backbone
        self.original = None
        if backbone == "original":
            from uplift.backbones import OriginalDINOv2Backbone

            model = _hub_load(f"{self.label}'s original DINOv2-S/14 backbone", backbone_repo, "dinov2_vits14",
                              source=backbone_source, trust_repo=trust_repo, needs="only torch", pretrained=True)
            self.original = OriginalDINOv2Backbone(model, name=f"{backbone_repo}:dinov2_vits14")

    def own_backbone(self) -> Optional["Backbone"]:
        return self.original

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        if tuple(image.shape[-2:]) != output_size:
            image = resize_bilinear(image, output_size)
        return self.model(features, image)


class FeatUpJBU(TorchHubUpsampler):
    """FeatUp's JBU stack for DINOv2-S/14 (hub entry ``dinov2``), by default without backbone normalisation
    (``use_norm: false``, the checkpoint the paper uses).

    Follows ``mhamilton723/FeatUp`` at 6b5a6c0: the hub entry returns the backbone and the upsampler; this row
    keeps the upsampler, ``model.upsampler(features, image)`` (after the entry's ``ChannelNorm`` on the features
    with ``use_norm: true``), which upsamples 16x; the result is resized to ``output_size`` (512 -> 448).
    """

    label = "FeatUp"
    code = "mhamilton723/FeatUp@6b5a6c0e91f75e69194807128dcbc39c3084a30d"
    entry = "dinov2"
    needs = "the featup package with its CUDA extension (pip install git+https://github.com/mhamilton723/FeatUp)"

    def __init__(self, use_norm: bool = False, repo: str = "mhamilton723/FeatUp",
                 source: Literal["github", "local"] = "github", trust_repo: bool = False,
                 hub_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__(repo, source, trust_repo, {**(hub_kwargs or {}), "use_norm": use_norm})
        # the entry's backbone (DINOv2 inside ``model.model``) is not this row's: keep the upsampler and the norm
        self.norm = self.model.model[1] if use_norm else None
        self.model = self.model.upsampler

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(features if self.norm is None else self.norm(features), image)


JAFAR_DINOV2_S14 = "https://github.com/PaulCouairon/JAFAR/releases/download/Weights/vit_small_patch14_dinov2.lvd142m.pth"


class JAFAR(PeerUpsampler):
    """JAFAR, from a local checkout of its repository (it has no ``hubconf.py``) and its released weights.

    Follows ``PaulCouairon/JAFAR`` at 94d4d54: the class ``src.upsampler.JAFAR`` built as its config
    ``config/model/jafar.yaml`` says (``input_dim=3, qk_dim=128, v_dim=feature_dim=C, kernel_size=1,
    num_heads=4``), weights under the checkpoint's ``"jafar"`` key, called as its evaluation does
    (``evaluation/train_probes.py``): ``model(image, features, (H, W))`` with the image normalised with the
    backbone's mean and std; the result has ``output_size``.

    Args:
        repo: path of a local clone of https://github.com/PaulCouairon/JAFAR. Its code is imported and run in
            this process (your explicit choice: point it only at a checkout you trust). Its code needs einops.
        weights: the released weights: a local file, or its release URL (downloaded once into torch.hub's
            cache). ``.safetensors`` or a ``.pth`` that ``torch.load(weights_only=True)`` reads; a file that
            holds pickled objects besides tensors is refused with the command that extracts its tensors.
        feature_channels: the backbone's channels (JAFAR's ``v_dim``): 384 for DINOv2-S/14.
    """

    label = "JAFAR"
    code = "PaulCouairon/JAFAR@94d4d5456ff3c719d111b9a26ead3813e089302b"

    def __init__(self, repo: Optional[str] = None, weights: str = JAFAR_DINOV2_S14, feature_channels: int = 384) -> None:
        super().__init__()
        self.repo, self.weights, self.feature_channels = repo, weights, feature_channels
        self.model = _import_jafar(repo)(input_dim=3, qk_dim=128, v_dim=feature_channels, feature_dim=feature_channels,
                                         kernel_size=1, num_heads=4)
        _load_jafar_weights(self.model, weights, feature_channels)
        self.model.eval().requires_grad_(False)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        try:
            return self.model(image, features, output_size)
        except (RuntimeError, AssertionError) as err:
            if image.is_cuda:
                raise
            raise RuntimeError(f"JAFAR failed on the CPU ({type(err).__name__}: {err}). Its code at 94d4d54 makes its "
                               f"coordinate grid on 'cuda' (utils/img.py, create_coordinate): run this row on a GPU.") from err


def _import_jafar(repo: Optional[str]) -> type:
    """``src.upsampler.JAFAR`` from the checkout at ``repo`` (its modules ``src`` and ``utils`` are top-level)."""
    if repo is None:
        raise UpsamplerUnavailableError(
            "JAFAR is unavailable: it has no torch.hub entry; clone https://github.com/PaulCouairon/JAFAR and set "
            "`repo: /path/to/JAFAR` on the row (its code is then imported and run here).")
    root = Path(repo).expanduser().resolve()
    source = root / "src" / "upsampler" / "jafar.py"
    if not source.is_file():
        raise UpsamplerUnavailableError(f"JAFAR is unavailable: {root} is not a checkout of "
                                        f"https://github.com/PaulCouairon/JAFAR (no src/upsampler/jafar.py).")
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("src.upsampler")
    except ImportError as err:  # its requirements (einops), or a clash with another top-level `src`/`utils`
        raise UpsamplerUnavailableError(f"JAFAR is unavailable: importing its code from {root} failed "
                                        f"({type(err).__name__}: {err}); it needs einops.") from err
    finally:
        sys.path.remove(str(root))
    cls = getattr(module, "JAFAR", None)
    where = Path(sys.modules[cls.__module__].__file__).resolve() if cls is not None else None
    if where != source.resolve():
        raise UpsamplerUnavailableError(f"JAFAR is unavailable: `src.upsampler` was already imported from another place "
                                        f"({where or module.__file__}) in this process; run the JAFAR row in its own process.")
    return cls


def _load_jafar_weights(model: nn.Module, weights: str, feature_channels: int) -> None:
    import pickle

    from uplift.checkpoints import read_weights_file

    if urlparse(weights).scheme in ("http", "https"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / "jafar" / Path(urlparse(weights).path).name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(weights, str(path))
            except Exception as err:
                raise UpsamplerUnavailableError(
                    f"JAFAR is unavailable: its weights could not be downloaded from {weights} ({type(err).__name__}: "
                    f"{err}); download the file by hand and set `weights: /path/to/file`.") from err
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UpsamplerUnavailableError(f"JAFAR is unavailable: weights file {path} not found (its release: "
                                            f"{JAFAR_DINOV2_S14}).")
    try:
        state = read_weights_file(path)
    except WeightsError as err:  # weights_only refuses pickled objects (its training script saved its config too)
        if not isinstance(err.__cause__, pickle.UnpicklingError):
            raise
        raise UpsamplerUnavailableError(
            f"JAFAR is unavailable: {path} holds more than tensors and is not unpickled here "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Extract its tensors once where you "
            f"trust the file: python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{path}', weights_only=False)['jafar'], 'jafar.safetensors')\" and set "
            f"`weights: jafar.safetensors`.") from err
    state = state.get("jafar", state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path} is not a JAFAR checkpoint: {len(missing)} of the model's tensors are missing "
                         f"({', '.join(missing[:4])}, ...).")
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if shapes:
        raise ValueError(f"{path} does not fit JAFAR with `feature_channels: {feature_channels}` (weights for another "
                         f"backbone?): " + "; ".join(shapes[:4]))
    # Tensors the model does not have are left out, as JAFAR's own evaluation does (load_state_dict(strict=False)):
    # the released checkpoints carry unused ones (query_features_encoder.*, PaulCouairon/JAFAR issue #1).
    model.load_state_dict({k: state[k] for k in expected})


# ------------------------------------------------------------------------------------------ LiFT
__all__ += ["LIFT_CHECKPOINT", "LiFT", "LiFT2x"]

#: Where ``uplift fit --config configs/lift_dinov2_s14.yaml`` leaves the trained LiFT.
LIFT_CHECKPOINT = "runs/lift_dinov2_s14/checkpoints/last.ckpt"


class LiFT(Upsampler):
    """LiFT run four times (16x: 32x32 -> 512x512 on a 448 image) and resized to the output size, as
    the paper's "LiFT" row (after JAFAR). Weights: a ``uplift fit`` checkpoint of ``tasks.LiFTTask``
    or a :func:`uplift.lift.save_lift` directory; there is no official DINOv2-S/14 LiFT."""

    label = "LiFT"
    steps = 4

    def __init__(self, weights: str = LIFT_CHECKPOINT) -> None:
        super().__init__()
        from uplift.lift import load_lift

        self.weights = weights
        if not Path(weights).exists():
            raise UpsamplerUnavailableError(
                f"{self.label}: no trained LiFT at {weights}; train it with `uplift fit --config "
                f"configs/lift_dinov2_s14.yaml` (it writes {LIFT_CHECKPOINT}) or pass its path as `weights`."
            )
        self.model = load_lift(weights)

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        return self.model(image, features, steps=self.steps)  # forward() resizes 512 -> 448 (bilinear, antialiased)


class LiFT2x(LiFT):
    """One LiFT step (2x), then bilinear upsampling to the output size: the paper's "LiFT-2x" row."""

    label = "LiFT-2x"
    steps = 1

    def upsample(self, image: Tensor, features: Tensor, output_size: tuple[int, int]) -> Tensor:
        x = self.model(image, features, steps=self.steps)
        return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
