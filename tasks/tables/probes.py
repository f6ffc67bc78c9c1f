"""The one implementation of the probe tables (1, 5, 6, 7, 8): rows, datasets, trained models, cells, the table.

A :class:`Row` is an upsampler (class path + init args) on a backbone (:class:`BackboneSpec`: the probe
configs' DINOv2-S/14, or DINOv3-S+/16 for Table 8), optionally with a :class:`Model` the driver trains first
(its checkpoint becomes the row's ``weights``). A :class:`Column` is a probe dataset (:data:`DATASETS`, a
config at full scale and a tiny one) on one backbone. A :class:`ProbeTable` names its rows, columns and the
paper's numbers; :func:`run_table` computes it and writes ``<results>/tableN.{md,csv}``.

Everything is cached in folders SHARED by all tables (under ``<results>/``, or ``<results>/tiny/`` at SCALE=tiny),
each keyed on the arguments that produce it (:func:`args_key`), so the same work is done once whichever table
asks for it first:

- ``models/<name>-<key>/``: trained upsamplers (:func:`fit_once` of the model's config and overrides). The
  d = {1, 2, 3}, n = 17 UPLiFT of Tables 6 and 7 is one folder (and at SCALE=tiny Tables 1, 5 and 8 use it too);
- ``probes/<row>__<dataset>-<key>``: probe cells (``uplift fit`` then ``uplift test``; the ``.json`` beside the
  folder is the finished result), keyed on the probe config, its overrides and the weights file's size and
  time, so Table 5's LoftUp and UPLiFT cells are Table 1's, Table 8's DINOv2 cells are Table 1's;
- ``timings/<row>-<key>.json``: an upsampler's parameters and its time per image.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tasks.tables import (REPO, TINY_BANNER, ResultsCache, RowUnavailable, args_key, cell, fit_once, fmt, report,
                          results_dir, test_metrics, write_table)

__all__ = ["DATASETS", "DINOV2", "DINOV3", "HUB_CLASSES", "ROWS", "BackboneSpec", "Column", "Dataset", "Model",
           "ProbeTable", "Row", "Runner", "add_common_options", "add_peer_options", "lift_model", "peer_init",
           "run_cell", "run_table", "standard_row", "time_row", "unsupported_options", "uplift_model"]


# ------------------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class Dataset:
    """A probe: its configs (full, tiny), the generated tiny data, and the two metrics the tables print."""

    title: str
    metrics: tuple[str, str]
    metric_titles: tuple[str, str]
    full: str
    tiny: str
    tiny_root: str

    def config(self, scale: str) -> str:
        return str(REPO / (self.tiny if scale == "tiny" else self.full))

    def scale_of(self, metric: str) -> float:
        """Fractions are printed as percent (as the paper); RMSE as it is."""
        return 1.0 if metric.endswith("rmse") else 100.0


_SEG = (("test/mIoU", "test/acc"), ("mIoU", "Acc"))
DATASETS: dict[str, Dataset] = {
    "coco": Dataset("COCO", *_SEG, "configs/probe_coco.yaml", "tests/conf/probe_coco.yaml", "tests/data/cocostuff"),
    "voc": Dataset("VOC", *_SEG, "configs/probe_voc.yaml", "tests/conf/probe_voc.yaml", "tests/data/voc"),
    "ade20k": Dataset("ADE20K", *_SEG, "configs/probe_ade20k.yaml", "tests/conf/probe_ade20k.yaml", "tests/data/ade20k"),
    "cityscapes": Dataset("Cityscapes", *_SEG, "configs/probe_cityscapes.yaml", "tests/conf/probe_cityscapes.yaml",
                          "tests/data/cityscapes"),
    "depth": Dataset("COCO depth", ("test/delta1", "test/rmse"), ("δ1", "RMSE"), "configs/depth_coco.yaml",
                     "tests/conf/depth.yaml", "tests/data/cocostuff"),
}


# ------------------------------------------------------------------------------------------ backbones

#: The tiny random ViT of the tests/conf configs (``img_size`` is the tiny side of the backbone).
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@dataclass(frozen=True)
class BackboneSpec:
    """The frozen backbone of a row. ``default``: the probe configs' own (DINOv2-S/14), so it adds no overrides
    and its cells are the same cells in every table."""

    key: str
    label: str
    name: str
    patch_size: int
    tiny_side: int
    side: int = 448
    default: bool = False

    def side_at(self, scale: str) -> int:
        """Images and features of the probes: 448 (a multiple of 14 and 16); tiny: the smallest few patches."""
        return self.tiny_side if scale == "tiny" else self.side

    def model_kwargs(self, scale: str) -> dict[str, Any]:
        return {**TINY_VIT, "img_size": self.tiny_side} if scale == "tiny" else {}

    def probe_args(self, scale: str) -> list[str]:
        """Overrides that put a probe config (made for DINOv2-S/14) on this backbone."""
        if self.default:
            return []
        side = self.side_at(scale)
        args = [f"--model.init_args.backbone.name={self.name}"]
        if scale == "tiny":
            args.append(f"--model.init_args.backbone.model_kwargs={json.dumps(self.model_kwargs(scale))}")
        return args + [f"--model.init_args.feature_size={side}", f"--data.init_args.image_size={side}"]

    def config(self, scale: str) -> Any:
        """A :class:`~tasks.common.BackboneConfig` for timing (random weights: the time does not depend on them)."""
        from tasks.common import BackboneConfig

        return BackboneConfig(name=self.name, pretrained=False, model_kwargs=self.model_kwargs(scale))


DINOV2 = BackboneSpec("dinov2", "DINOv2-S/14", "vit_small_patch14_dinov2.lvd142m", 14, 56, default=True)
DINOV3 = BackboneSpec("dinov3", "DINOv3-S+/16", "vit_small_plus_patch16_dinov3.lvd1689m", 16, 64)


# ------------------------------------------------------------------------------------------ trained models


@dataclass(frozen=True)
class Model:
    """A model a row trains first: ``uplift fit --config config *args``, once, in ``<results>/models/<name>-<key>/``
    (``key``: the config and the arguments). ``name`` is the family (``uplift-dinov2``); what makes two models the
    same model is their arguments, so build them with :func:`uplift_model` / :func:`lift_model`."""

    name: str
    config: str
    args: tuple[str, ...] = ()


#: A few steps of the tiny configs, with checkpoints (tests/conf/predictive.yaml and lift.yaml have none).
TINY_TRAIN = ("--trainer.max_steps=10", "--trainer.enable_checkpointing=true",
              "--trainer.callbacks+=tasks.callbacks.RunCheckpoint")
#: The release's training depths per backbone (configs/dinov2_s14.yaml, configs/dinov3_splus16.yaml).
DEFAULT_DEPTHS = {"dinov2": (1, 2, 3), "dinov3": (1, 2)}
UPLIFT_CONFIGS = {"dinov2": "configs/dinov2_s14.yaml", "dinov3": "configs/dinov3_splus16.yaml"}


def uplift_model(scale: str, backbone: BackboneSpec = DINOV2, depths: Optional[Sequence[int]] = None,
                 neighbourhood: Optional[int] = 17, train_args: Sequence[str] = ()) -> Model:
    """UPLiFT trained with the release's recipe for ``backbone`` (full: its paper config; tiny: the tiny predictive
    config) with ``depths`` (default: the release's) and the Local Attender's ``neighbourhood`` (``None``: no Local
    Attender, Table 7's "No LA"). Both are always written out, so the default model of Tables 6 and 7 is one model.

    At SCALE=tiny every UPLiFT trains at patch x 16 px (224 for patch 14), the smallest size that depth 4 halves
    four times into whole patches (Table 6), so the tiny models of every table share one recipe.
    ``train_args`` (full scale: where ImageNet is) are part of the model's identity."""
    depths = tuple(sorted({int(d) for d in (depths or DEFAULT_DEPTHS[backbone.key])}))
    # jsonargparse 4.x does not carry a dotted `...uplift.neighbourhood=null` through a subclass's init_args: a dict does
    no_la = '--model.init_args.uplift={"neighbourhood": null}'
    args = [f"--model.init_args.depths=[{','.join(map(str, depths))}]",
            no_la if neighbourhood is None else f"--model.init_args.uplift.neighbourhood={int(neighbourhood)}"]
    if scale != "tiny":
        return Model(f"uplift-{backbone.key}", UPLIFT_CONFIGS[backbone.key], (*args, *train_args))
    tiny = [*TINY_TRAIN, f"--data.init_args.image_size={backbone.patch_size * 16}"]
    if not backbone.default:
        tiny += [f"--model.init_args.backbone.name={backbone.name}",
                 f"--model.init_args.backbone.model_kwargs={json.dumps(backbone.model_kwargs(scale))}",
                 f"--model.init_args.uplift.patch_size={backbone.patch_size}"]
    return Model(f"uplift-{backbone.key}", "tests/conf/predictive.yaml", (*tiny, *args))


def lift_model(scale: str, train_args: Sequence[str] = ()) -> Model:
    """The LiFT the paper trained for DINOv2-S/14 (appendix A): configs/lift_dinov2_s14.yaml (tiny: tests/conf/lift.yaml)."""
    if scale == "tiny":
        return Model("lift-dinov2", "tests/conf/lift.yaml", TINY_TRAIN)
    return Model("lift-dinov2", "configs/lift_dinov2_s14.yaml", tuple(train_args))


def unsupported_options(config: str | Path, args: Sequence[str]) -> Optional[str]:
    """Why ``uplift fit --config config *args`` does not parse (an option this version of a model does not have),
    or None. Parsing only (``--print_config``): nothing is built or downloaded."""
    from tasks.cli import run_cli
    from uplift.errors import ConfigError

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_cli(["fit", "--config", str(config), *args, "--print_config"])
    except ConfigError as problem:  # the CLI's parse errors, one line each
        return str(problem)
    except SystemExit as stop:
        if not stop.code:
            return None
        text = err.getvalue()
        lines = [line.strip() for line in text[text.find("error:"):].splitlines() if line.strip()]
        where = next((i for i, line in enumerate(lines) if line.startswith("Parser key")), None)
        detail = " ".join(lines[where:where + 2]) if where is not None else (lines[-1] if lines else "no parser output")
        return detail
    return None


# ------------------------------------------------------------------------------------------ rows


def _short(class_path: str) -> str:
    name = class_path.rsplit(".", 1)[-1].lower()
    return name.removesuffix("upsampler") or name


@dataclass
class Row:
    """One upsampler on one backbone; ``model``: trained first, its checkpoint becomes ``init["weights"]``."""

    upsampler: str
    init: dict[str, Any] = field(default_factory=dict)
    backbone: BackboneSpec = DINOV2
    model: Optional[Model] = None
    #: the readable part of its cache names (default: the model's name, or the class's)
    name: str = ""

    @property
    def slug(self) -> str:
        base = self.name or (self.model.name if self.model else _short(self.upsampler))
        return base if self.backbone.default or self.backbone.key in base else f"{base}-{self.backbone.key}"

    def upsampler_args(self) -> list[str]:
        """The probe config overrides that select this upsampler (init args sorted: one spelling per row)."""
        return [f"--model.init_args.upsampler.class_path={self.upsampler}",
                *(f"--model.init_args.upsampler.init_args.{k}={v}" for k, v in sorted(self.init.items()))]

    def weights_stamp(self) -> Optional[list]:
        """Size and time of a weights file, so retrained weights at the same path make new cells."""
        weights = self.init.get("weights")
        path = Path(str(weights)) if weights else None
        return [path.stat().st_size, path.stat().st_mtime_ns] if path is not None and path.is_file() else None


#: The rows of Table 1 (and Table 5's ``loftup-timm``): id -> (label, class path, init args).
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "nearest": ("Nearest", "uplift.upsamplers.Nearest", {}),
    "bilinear": ("Bilinear", "uplift.upsamplers.Bilinear", {}),
    "lift2x": ("LiFT-2x", "uplift.upsamplers.LiFT2x", {}),
    "lift": ("LiFT", "uplift.upsamplers.LiFT", {}),
    "featup": ("FeatUp", "uplift.upsamplers.FeatUpJBU", {}),
    "loftup": ("LoftUp", "uplift.upsamplers.LoftUp", {"backbone": "original"}),
    "loftup-timm": ("LoftUp + timm backbone", "uplift.upsamplers.LoftUp", {"backbone": "task"}),
    "jafar": ("JAFAR", "uplift.upsamplers.JAFAR", {}),
    "anyup": ("AnyUp", "uplift.upsamplers.AnyUp", {}),
    "uplift": ("UPLiFT", "uplift.upsamplers.UPLiFTUpsampler", {"weights": "dinov2-s14"}),
}
#: Peers whose code torch.hub downloads and runs: ``--trust-peer-repos`` opts in for all of them.
HUB_CLASSES = ("uplift.upsamplers.AnyUp", "uplift.upsamplers.LoftUp", "uplift.upsamplers.FeatUpJBU")


def standard_row(row_id: str, scale: str, peers: dict[str, dict[str, Any]], uplift_weights: Optional[str] = None,
                 lift_weights: Optional[str] = None, train_args: Sequence[str] = ()) -> Row:
    """A row of :data:`ROWS` as every table builds it (so the same row is the same cell in every table): the peer
    options of its class, and the weights of a trained row: given, released (full UPLiFT), or trained first
    (UPLiFT at SCALE=tiny, which has no released weights for its toy backbone; LiFT, which has none at all)."""
    _, class_path, init = ROWS[row_id]
    row = Row(class_path, {**init, **peers.get(class_path, {})}, name=row_id)
    if row_id == "uplift":
        if uplift_weights:
            row.init["weights"] = uplift_weights
        elif scale == "tiny":
            row.model = uplift_model(scale)
    elif row_id in ("lift", "lift2x"):
        if lift_weights:
            row.init["weights"] = lift_weights
        else:
            row.model = lift_model(scale, train_args)
    if row.model is not None:
        row.name = ""  # named by its model: Tables 6 and 7 build the same model without a row id
    return row


# ------------------------------------------------------------------------------------------ options


def add_common_options(parser: argparse.ArgumentParser, table: int, trains: bool = False) -> None:
    parser.add_argument("--scale", choices=("full", "tiny"), default="full",
                        help="tiny: the whole pipeline on the generated data in tests/data, CPU, minutes "
                        "(MEANINGLESS numbers)")
    parser.add_argument("--results", default="results",
                        help=f"output folder: table{table}.md/.csv; trained models, probe cells and timings are cached in "
                        f"its models/, probes/ and timings/ (shared by every table)")
    if trains:
        parser.add_argument("--imagenet", default=None, help="ImageNet-1k train folder of the models this table trains "
                            "(default: the training configs' data.init_args.root, /data/imagenet/train)")


def train_args(args: argparse.Namespace) -> list[str]:
    return [f"--data.init_args.root={args.imagenet}"] if getattr(args, "imagenet", None) else []


def add_peer_options(parser: argparse.ArgumentParser, jafar: bool = True) -> None:
    parser.add_argument("--trust-peer-repos", action="store_true",
                        help="let torch.hub download and RUN the code of the peers' GitHub repositories (AnyUp, LoftUp, "
                        "FeatUp rows: `trust_repo: true`); without it torch.hub runs only repositories it already trusts")
    if jafar:
        parser.add_argument("--jafar-repo", default=None, help="JAFAR rows: a local checkout of PaulCouairon/JAFAR (its "
                            "code is imported and run; JAFAR has no torch.hub entry)")
        parser.add_argument("--jafar-weights", default=None, help="JAFAR row (DINOv2-S/14): its released weights (path "
                            "or URL; default: the release URL)")


def peer_init(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The init args the peer options give each peer class (``--jafar-weights`` is the DINOv2 row's)."""
    peers: dict[str, dict[str, Any]] = {cls: {"trust_repo": True} for cls in HUB_CLASSES if args.trust_peer_repos}
    given = (("repo", getattr(args, "jafar_repo", None)), ("weights", getattr(args, "jafar_weights", None)))
    jafar = {k: v for k, v in given if v}
    if jafar:
        peers["uplift.upsamplers.JAFAR"] = jafar
    return peers


# ------------------------------------------------------------------------------------------ cells


def run_cell(config: str, args: Sequence[str], run_dir: Path, metrics: Sequence[str]) -> dict[str, Any]:
    """Fit (once) then test one probe in ``run_dir``; returns the metrics, or raises :class:`RowUnavailable`."""
    from uplift.errors import user_error
    from uplift.upsamplers import UpsamplerUnavailableError

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    probe = [f"--model.init_args.probe_checkpoint={checkpoint}"]
    try:
        fit_once(config, [*args, *probe], run_dir)
    except Exception as err:
        cause = user_error(err)
        if isinstance(cause, UpsamplerUnavailableError):
            raise RowUnavailable(str(cause).splitlines()[0]) from err
        raise
    test = [*args, *probe, f"--trainer.default_root_dir={run_dir / 'test'}", f"--ckpt_path={checkpoint}"]
    return {"status": "done", "metrics": test_metrics(config, test, metrics)}


def time_row(row: Row, scale: str) -> dict[str, Any]:
    """Parameters and median upsampling time of one image (448x448, tiny: the backbone's tiny side; batch 1) on the
    available device (``torch.utils.benchmark``: warm-up, then as many runs as fit in the time, synchronised on CUDA)."""
    import importlib

    import torch
    from torch.utils.benchmark import Timer

    from uplift.upsamplers import UpsamplerUnavailableError

    module, cls = row.upsampler.rsplit(".", 1)
    try:
        upsampler = getattr(importlib.import_module(module), cls)(**row.init)
    except UpsamplerUnavailableError as err:
        raise RowUnavailable(str(err).splitlines()[0]) from err
    side = row.backbone.side_at(scale)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = row.backbone.config(scale).build().to(device)  # timing needs no trained weights
    upsampler = upsampler.to(device).eval()
    image = torch.rand(1, 3, side, side, device=device)
    with torch.no_grad():
        low, normalised = model(image), model.normalize(image)
        for _ in range(3):  # warm-up (allocator, cuDNN autotuning)
            upsampler(normalised, low, (side, side))
        timer = Timer("upsampler(image, low, size)", globals={"upsampler": upsampler, "image": normalised, "low": low,
                                                              "size": (side, side)})
        measurement = timer.blocked_autorange(min_run_time=0.2 if scale == "tiny" else 2.0)
    return {"status": "done", "params": upsampler.num_parameters(), "ms": measurement.median * 1000,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "side": side}


class Runner:
    """Computes cells and timings of rows at one scale, with the shared caches of one results folder."""

    def __init__(self, scale: str, results: str | Path, extra: Sequence[str] = ()) -> None:
        self.scale, self.tiny = scale, scale == "tiny"
        self.results = results_dir(results, self.tiny)
        #: arguments for every probe fit/test (e.g. ``--data.init_args.root``)
        self.extra = list(extra)
        self._trained: dict[Model, Any] = {}
        self._timings: dict[str, dict[str, Any]] = {}

    @property
    def models_dir(self) -> Path:
        return self.results / "models"

    @property
    def probes_dir(self) -> Path:
        return self.results / "probes"

    @property
    def timings_dir(self) -> Path:
        return self.results / "timings"

    # ---------------------------------------------------------------- models
    def model_dir(self, model: Model) -> Path:
        return self.models_dir / f"{model.name}-{args_key(str(REPO / model.config), list(model.args))}"

    def train(self, model: Model) -> str:
        """The checkpoint of ``model``, trained now unless a finished run of it exists (an interrupted one resumes).
        A model whose options this version of the code does not have raises :class:`RowUnavailable`."""
        if model not in self._trained:
            from tasks.cli import read_finished

            config, run_dir = str(REPO / model.config), self.model_dir(model)
            try:
                if read_finished(run_dir) is None:  # one cheap parse before hours of training
                    problem = unsupported_options(config, model.args)
                    if problem:
                        raise RowUnavailable(f"{model.name} with `{' '.join(a for a in model.args if a not in TINY_TRAIN)}` "
                                             f"cannot be trained by this version of the code: {problem}")
                self._trained[model] = str(fit_once(config, list(model.args), run_dir))
            except RowUnavailable as err:
                self._trained[model] = err
        result = self._trained[model]
        if isinstance(result, RowUnavailable):
            raise result
        return result

    def resolve(self, row: Row) -> Row:
        """``row`` with its trained model's checkpoint as its weights (training it once if needed)."""
        if row.model is None:
            return row
        return replace(row, init={**row.init, "weights": self.train(row.model)}, model=None, name=row.slug)

    # ---------------------------------------------------------------- cells
    def probe_args(self, row: Row, dataset: str) -> tuple[str, list[str]]:
        """The probe config of ``dataset`` and the overrides that select ``row`` (its backbone, the tiny data)."""
        spec = DATASETS[dataset]
        args = [*row.upsampler_args(), *row.backbone.probe_args(self.scale)]
        if self.tiny:
            args.append(f"--data.init_args.root={REPO / spec.tiny_root}")
            if dataset == "depth":  # keep the (tiny, random) pseudo-depth cache out of tests/data
                args.append(f"--data.init_args.cache_dir={self.probes_dir / 'depth_cache'}")
        return spec.config(self.scale), [*args, *self.extra]

    def cell(self, row: Row, dataset: str) -> dict[str, Any]:
        """One probe cell: cached, or trained and tested now; ``{"status": "unavailable", ...}`` for a row that
        cannot be had here."""
        try:
            row = self.resolve(row)
        except RowUnavailable as err:
            return {"status": "unavailable", "reason": str(err)}
        config, args = self.probe_args(row, dataset)
        key = args_key(config, args, row.weights_stamp())
        name = f"{row.slug}__{dataset}-{key}"
        return ResultsCache(self.probes_dir)(name, key, lambda: run_cell(config, args, self.probes_dir / name,
                                                                         DATASETS[dataset].metrics))

    def timing(self, row: Row) -> dict[str, Any]:
        """Parameters and time per image of ``row`` (:func:`time_row`), cached; unavailable rows say why."""
        try:
            row = self.resolve(row)
        except RowUnavailable as err:
            return {"status": "unavailable", "reason": str(err)}
        key = args_key(row.upsampler_args(), row.backbone.key, self.scale, row.weights_stamp())
        if key not in self._timings:  # once per run also when unavailable (which is not cached: tried again next run)
            self._timings[key] = ResultsCache(self.timings_dir)(f"{row.slug}-{key}", key, lambda: time_row(row, self.scale))
        return self._timings[key]


# ------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class Column:
    """A pair of metric columns: a probe dataset on a backbone."""

    key: str
    dataset: str
    backbone: BackboneSpec = DINOV2
    title: str = ""

    @property
    def heading(self) -> str:
        return self.title or DATASETS[self.dataset].title


@dataclass
class ProbeTable:
    """A probe table: rows (id -> label) x columns; ``row(id, column)`` is the :class:`Row` of a cell.

    ``paper``: row id -> {column key: (metric 1, metric 2), "params": M, "ms": ms}; ``stats``: the per-row columns
    in front (``params``, ``ms``: measured by :func:`time_row` on the row's first column); ``marks``: footnote marks
    after paper values, ``(row id, column key, metric index) -> mark``."""

    number: int
    title: str
    rows: dict[str, str]
    columns: list[Column]
    row: Callable[[str, Column], Row]
    paper: dict[str, dict[str, Any]]
    stats: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    marks: dict[tuple[str, str, int], str] = field(default_factory=dict)
    method: str = "Method"


def compute(runner: Runner, table: ProbeTable) -> tuple[dict[tuple[str, str], dict], dict[tuple[str, str], dict]]:
    """Every cell of ``table`` (and, with ``stats``, the timing of every row spec), with a progress bar. A row whose
    code or weights cannot be had (its timing says so) is not fitted."""
    from tqdm import tqdm

    cells: dict[tuple[str, str], dict] = {}
    timings: dict[tuple[str, str], dict] = {}
    jobs = [(row_id, column) for row_id in table.rows for column in table.columns]
    bar = tqdm(jobs, desc=f"Table {table.number}", unit="cell", file=sys.stdout)
    for row_id, column in bar:
        bar.set_description(f"Table {table.number}: {table.rows[row_id]} x {column.heading}")
        row = table.row(row_id, column)
        if table.stats:
            timings[(row_id, column.key)] = runner.timing(row)
            if timings[(row_id, column.key)].get("status") == "unavailable":  # no code/weights: skip its fits too
                cells[(row_id, column.key)] = timings[(row_id, column.key)]
                continue
        cells[(row_id, column.key)] = runner.cell(row, column.dataset)
    return cells, timings


def write_results(runner: Runner, table: ProbeTable, cells: dict[tuple[str, str], dict],
                  timings: dict[tuple[str, str], dict]) -> tuple[Path, Path]:
    """``<results>/tableN.{md,csv}``: ours (paper) in every cell, a CSV record per value."""
    header = [table.method, *({"params": "Params (M)", "ms": "Time (ms)"}[s] for s in table.stats)]
    for column in table.columns:
        header += [f"{column.heading} {t}" for t in DATASETS[column.dataset].metric_titles]
    rows, records = [], []
    for row_id, label in table.rows.items():
        paper = table.paper.get(row_id, {})
        line = [label]
        timing = next((timings[(row_id, c.key)] for c in table.columns
                       if timings.get((row_id, c.key), {}).get("status") == "done"),
                      timings.get((row_id, table.columns[0].key), {}) if table.columns else {})
        for stat in table.stats:
            ours = timing.get(stat)
            line.append(cell(ours and ours / 1e6, paper.get(stat)) if stat == "params" else cell(ours, paper.get(stat), 1))
            records.append({"method": label, "backbone": "-", "dataset": "-", "metric": "time_ms" if stat == "ms" else stat,
                            "ours": "" if ours is None else ours, "paper": paper.get(stat) or "",
                            "status": timing.get("status", ""), "reason": timing.get("reason", "")})
        for column in table.columns:
            result = cells.get((row_id, column.key), {})
            ours = result.get("metrics", {}) if result.get("status") == "done" else {}
            spec = DATASETS[column.dataset]
            for i, (metric, ref) in enumerate(zip(spec.metrics, paper.get(column.key, (None, None)))):
                mark = table.marks.get((row_id, column.key, i), "") if ref is not None else ""
                line.append(f"{fmt(ours.get(metric), 2, spec.scale_of(metric))} ({fmt(ref)}{mark})")
                records.append({"method": label, "backbone": column.backbone.key, "dataset": column.dataset,
                                "metric": metric.split("/")[1], "ours": ours.get(metric, ""),
                                "paper": "" if ref is None else ref, "status": result.get("status", "missing"),
                                "reason": result.get("reason", "")})
        rows.append(line)
    notes = ["Each cell: ours (paper); '-': not measured or not reported."]
    if "ms" in table.stats:
        devices = sorted({t["device"] for t in timings.values() if t.get("status") == "done"}) or ["-"]
        side = DINOV2.side_at(runner.scale)
        notes[0] += f" Time: median per {side} px image on {', '.join(devices)}; the paper's is on an A5000."
    notes += table.notes
    unavailable = sorted({c["reason"] for c in cells.values() if c.get("status") == "unavailable"})
    if unavailable:
        notes += ["", "Unavailable rows (their code, weights or model options could not be had here):",
                  *[f"- {r}" for r in unavailable]]
    return write_table(runner.results / f"table{table.number}", table.title, notes, header, rows, records, runner.tiny)


def run_table(runner: Runner, table: ProbeTable) -> int:
    """Compute ``table`` (cached cells are reused), write ``tableN.{md,csv}`` and print it."""
    from uplift.errors import report_user_error

    if runner.tiny:
        print(TINY_BANNER, flush=True)
    try:
        cells, timings = compute(runner, table)
    except Exception as err:  # missing data or weights: one message that says what to do (finished work is kept)
        if not report_user_error(f"reproduce-table{table.number}", err,
                                 f"Finished cells and models are kept in {runner.results}; run the same command "
                                 f"again to continue."):
            raise
        return 2
    md, _ = write_results(runner, table, cells, timings)
    report(md, cells, runner.tiny)
    return 0
