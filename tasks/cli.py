"""The ``uplift`` command: LightningCLI with the task and data classes named in the YAML.

    uplift fit --config configs/quickstart.yaml
    uplift validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    uplift predict --config configs/quickstart.yaml --ckpt_path ... --data.predict_root my_images/

Lightning is imported here, not in ``uplift/__init__``: the core stays importable without it.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

__all__ = ["FINISHED", "main", "read_finished", "run_cli", "user_error", "without_ckpt_path"]

#: Written into ``trainer.default_root_dir`` by a fit that ran to its end, with the arguments that produced it:
#: what tells a finished run from an interrupted one (whose ``last.ckpt`` exists too).
FINISHED = "finished.json"


def without_ckpt_path(argv: list[str]) -> list[str]:
    """``argv`` without ``--ckpt_path X`` / ``--ckpt_path=X``: resuming does not change what a run computes."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            out.append(arg)
    return out


def read_finished(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The marker of a finished fit in ``run_dir`` (``{"args": [...], "global_step": n}``), or None."""
    path = Path(run_dir) / FINISHED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _checkpoint_callbacks(trainer: Any) -> list:
    """The trainer's checkpoint callbacks that know their folder before training (ours resolve it now)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tasks.callbacks import RunCheckpoint

    found = []
    for callback in trainer.callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.resolve_dirpath(trainer)
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            found.append(callback)
    return found


def _output_locations(trainer: Any, model: Any, subcommand: str) -> list[tuple[Path, str]]:
    """Every folder this run will write to, with the option that sets it (the prediction writer checks its own)."""
    places = [(Path(trainer.default_root_dir), "the run's files (--trainer.default_root_dir)")]
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            places.append((Path(logger.save_dir), "logs (--trainer.logger.init_args.save_dir)"))
    if subcommand == "fit":
        places += [(Path(c.dirpath), "checkpoints (--trainer.default_root_dir)") for c in _checkpoint_callbacks(trainer)]
    return places


def _refuse_overwriting_a_run(trainer: Any, resuming: bool) -> None:
    """A new fit never writes over the checkpoints or the finished marker of an earlier run."""
    from uplift.errors import ConfigError

    if resuming:
        return
    root = Path(trainer.default_root_dir)
    taken = [root / FINISHED] if (root / FINISHED).is_file() else []
    for callback in _checkpoint_callbacks(trainer):
        if Path(callback.dirpath).is_dir():
            taken += sorted(Path(callback.dirpath).glob("*.ckpt"))
    if taken:
        last = next((p for p in taken if p.name == "last.ckpt"), taken[0])
        raise ConfigError(
            f"{last.parent} already holds a run ({', '.join(p.name for p in taken[:4])}{', ...' if len(taken) > 4 else ''}"
            f"); a new fit would overwrite it. Resume it with `--ckpt_path {last}`, or start a new run in its own folder: "
            f"`--trainer.default_root_dir <new folder>`.")


def _cli_class() -> type:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    import uplift

    class RunConfig(SaveConfigCallback):
        """The resolved config, saved as ``config.yaml`` in the run's log folder (``uplift fit --config`` of it
        reproduces the run), under a header that marks it as ours: a file without it (the user's own config in
        the working directory, when the logger is off) is never overwritten; ``uplift_config.yaml`` is written
        beside it instead."""

        HEADER = "# uplift: the resolved config of the run in this folder (uplift fit --config <this file> reproduces it)\n"

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.already_saved:
                return
            log_dir = trainer.log_dir  # a collective call under DDP: every rank asks
            if trainer.is_global_zero:
                folder = Path(log_dir or trainer.default_root_dir)
                path = folder / self.config_filename
                if path.is_file() and not path.read_text(errors="replace").startswith(self.HEADER):
                    path = folder / "uplift_config.yaml"
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(self.HEADER + self.parser.dump(self.config, skip_none=False))
                self.already_saved = True
            self.already_saved = trainer.strategy.broadcast(self.already_saved)

    class UPLiFTCLI(LightningCLI):
        """LightningCLI in subclass mode (``model.class_path``/``data.class_path`` in the YAML).

        ``use_distributed_sampler`` defaults to off: our datamodules shard across ranks themselves
        with a sampler that also makes mid-epoch ``--ckpt_path`` resumption exact. Checkpoints given with
        ``--ckpt_path`` (also URLs) are always loaded with ``weights_only=True``: nothing in them executes.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            given = kwargs.get("args")
            self.argv = [str(a) for a in (sys.argv[1:] if given is None else given)]
            kwargs.setdefault("save_config_callback", RunConfig)
            super().__init__(*args, **kwargs)

        def init_parser(self, **kwargs: Any):
            parser = super().init_parser(**kwargs)
            parser.add_argument("--version", action="version", version=f"uplift {uplift.__version__}")
            return parser

        def _before(self, subcommand: str) -> None:
            config = self.config_init[subcommand]
            if "weights_only" in config:
                config["weights_only"] = True  # never unpickle code from a checkpoint, wherever it comes from
            from uplift.outputs import check_writable

            for folder, what in _output_locations(self.trainer, self.model, subcommand):
                check_writable(folder, what)
            if subcommand == "fit":
                _refuse_overwriting_a_run(self.trainer, resuming=config.get("ckpt_path") is not None)

        def before_fit(self) -> None:
            self._before("fit")

        def before_validate(self) -> None:
            self._before("validate")

        def before_test(self) -> None:
            self._before("test")

        def before_predict(self) -> None:
            self._before("predict")

        def add_arguments_to_parser(self, parser: Any) -> None:
            """Values a task and its data must agree on, set in one place. A link applies only when the configured
            classes both have its keys (other configs are untouched); its target cannot be set by hand."""
            # a probe's class count is the dataset's, read from the instantiated datamodule
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
            # super-resolution (Table 4): the task's high-resolution side is the datamodule's centre crop
            parser.link_arguments("data.init_args.crop_size", "model.init_args.hr_size")
            # text-to-image (Tables 2-3): FID's reference images are sized like the outputs, resolution * 2^steps
            parser.link_arguments(("model.init_args.resolution", "model.init_args.steps"),
                                  "data.init_args.reference_size", compute_fn=_output_size)

        def after_fit(self) -> None:
            """Mark the run finished (only reached when ``fit`` returned normally: an interrupted fit exits)."""
            trainer = self.trainer
            if trainer.is_global_zero and not trainer.interrupted:
                marker = Path(trainer.default_root_dir) / FINISHED
                marker.parent.mkdir(parents=True, exist_ok=True)
                args = without_ckpt_path(self.argv)
                marker.write_text(json.dumps({"args": args, "global_step": trainer.global_step}, indent=2) + "\n")

    return UPLiFTCLI


def _output_size(resolution: int, steps: int) -> int:
    return resolution * 2**steps


def user_error(err: BaseException) -> Optional[BaseException]:
    """The error meant for the user (bad input, missing data or weights) in ``err``'s chain.

    jsonargparse wraps errors raised while building the configured classes in a long "does not
    validate against any of the Union subtypes" message; the user needs only the original one. Our
    own errors (which already say what to do) win over the library errors they wrap.
    """
    from uplift.errors import UPLiFTError

    ours = UPLiFTError
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ours):
            return err
        if isinstance(err, (ValueError, FileNotFoundError)):
            found = err
        err = err.__cause__ or err.__context__
    return found


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``uplift``. Bad input ends in one ``uplift: error: ...`` message (exit 2); a run stopped by
    a signal saves, says where to resume from and exits with 128 + the signal's number; set
    ``UPLIFT_TRACEBACK=1`` to see the full traceback instead."""
    from tasks.callbacks import RunInterrupted

    try:
        run_cli(args)
    except RunInterrupted as err:
        print(f"uplift: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except Exception as err:
        user = user_error(err)
        if user is None or os.environ.get("UPLIFT_TRACEBACK"):
            raise
        print(f"uplift: error: {user}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(args: Optional[list[str]] = None) -> Any:
    """Run the CLI and return the LightningCLI object (its ``model``, ``datamodule``, ``trainer``)."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from tasks.callbacks import FiniteLoss, Interruptions

    cli_class = _cli_class()
    interruptions = Interruptions()
    # Called from Python (demo, Table 1 driver) the process's own argv is the driver's; it must stay
    # as it is (DDP re-launches the process with it), so only the warning about it is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        try:
            return cli_class(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                seed_everything_default=0,
                trainer_defaults={"use_distributed_sampler": False, "callbacks": [interruptions, FiniteLoss()]},
                parser_kwargs={"description": "UPLiFT: train feature upsamplers, evaluate them with probes, write dense "
                                              "features."},
                auto_configure_optimizers=False,
                args=args,
            )
        except SIGTERMException as stop:  # Lightning's graceful stop, reached through one of our signals
            raise _interrupted(interruptions) from stop


def _interrupted(interruptions: Any) -> Exception:
    """The :class:`~tasks.callbacks.RunInterrupted` of a run that a signal stopped: where it saved, how to resume."""
    import signal

    from lightning.pytorch.callbacks import ModelCheckpoint

    from tasks.callbacks import RunInterrupted

    trainer = interruptions._trainer
    signum = interruptions.received or signal.SIGTERM
    saved = [c.last_model_path for c in (trainer.callbacks if trainer else []) if isinstance(c, ModelCheckpoint)]
    saved = [p for p in saved if p]
    step = trainer.global_step if trainer is not None else "?"
    where = (f"its state at step {step} is saved in {saved[0]}; resume with the same command and `--ckpt_path {saved[0]}`."
             if saved else "no checkpoint callback was configured, so nothing was saved (add tasks.callbacks.RunCheckpoint).")
    return RunInterrupted(f"interrupted by {signal.Signals(signum).name} at step {step}: {where}", signum)

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
