"""The ``uplift`` command: LightningCLI with the task and data classes named in the YAML.

    uplift fit --config configs/quickstart.yaml
    uplift validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    uplift predict --config configs/quickstart.yaml --ckpt_path ... --data.predict_root my_images/

Lightning is imported here, not in ``uplift/__init__``: the core stays importable without it.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from uplift.errors import report_user_error

__all__ = ["FINISHED", "main", "read_finished", "run_cli", "unknown_config_keys", "without_ckpt_path"]

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
        places += [(Path(c.dirpath), "checkpoints (--trainer.default_root_dir)" if getattr(c, "dirpath_from_run", False)
                    else "checkpoints (--trainer.callbacks.dirpath)") for c in _checkpoint_callbacks(trainer)]
    return places


def _refuse_overwriting_a_run(trainer: Any, resuming: bool) -> None:
    """A new fit never writes over the checkpoints or the finished marker of an earlier run."""
    from uplift.errors import ConfigError

    if resuming:
        return
    root = Path(trainer.default_root_dir).resolve()
    taken = [root / FINISHED] if (root / FINISHED).is_file() else []
    for callback in _checkpoint_callbacks(trainer):
        if Path(callback.dirpath).is_dir():
            taken += sorted(Path(callback.dirpath).resolve().glob("*.ckpt"))
    if taken:
        last = next((p for p in taken if p.name == "last.ckpt"), taken[-1])
        listed = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in taken[:4])
        raise ConfigError(
            f"{root} already holds a run ({listed}{', ...' if len(taken) > 4 else ''}); a new fit would overwrite it. "
            f"Resume it with `--ckpt_path {last}`, or start a new run in its own folder: "
            f"`--trainer.default_root_dir <new folder>`.")


# ------------------------------------------------------------------------------------------ config files


def _union(hint: Any) -> list[Any]:
    """The members of a ``Union``/``Optional`` type hint (the hint itself otherwise), ``None`` left out."""
    import typing

    members = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    return [m for m in members if m is not type(None)]


def _parameters(cls: type) -> Optional[dict[str, Any]]:
    """``{name: type hint}`` of what jsonargparse accepts as ``init_args`` of ``cls`` (its resolver also follows
    ``**kwargs`` into the classes they are passed to), or None where it cannot tell."""
    try:
        from jsonargparse._parameter_resolvers import get_signature_parameters

        return {p.name: p.annotation for p in get_signature_parameters(cls, None)}
    except Exception:  # a private helper of jsonargparse: without it, no check rather than a wrong one
        return None


def _resolve_class(class_path: Any, bases: list[type]) -> Optional[type]:
    """The class a config's ``class_path`` names (dotted path, or a subclass's bare name as jsonargparse takes it)."""
    import importlib

    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    if module:
        try:
            return getattr(importlib.import_module(module), name, None)
        except Exception:
            return None
    found, todo = set(), list(bases)
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            found.add(cls)
        todo += cls.__subclasses__()
    return found.pop() if len(found) == 1 else None


def _unknown_in_value(value: Any, hint: Any, where: str) -> list[tuple[str, list[str]]]:
    """Unknown keys in ``value``, the config of something typed ``hint`` (a class given by ``class_path`` and its
    ``init_args``, a dataclass given as a dict, or a list of them); ``(key, valid keys beside it)`` each."""
    import collections.abc
    import dataclasses
    import typing

    members = _union(hint)
    if isinstance(value, list):
        items = [typing.get_args(m)[0] for m in members if typing.get_args(m) and typing.get_origin(m) in
                 (list, tuple, collections.abc.Sequence, collections.abc.Iterable)]
        if len(items) != 1:
            return []
        return [p for i, v in enumerate(value) for p in _unknown_in_value(v, items[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    classes = [m for m in members if isinstance(m, type)]
    if "class_path" in value:
        cls = _resolve_class(value["class_path"], classes)
        params = _parameters(cls) if cls is not None else None
        if params is None:
            return []
        allowed = ["class_path", "init_args", "dict_kwargs", "__path__"]
        problems = [(f"{where}.{k}", [f"{where}.init_args.{k}"] if k in params else [f"{where}.{a}" for a in allowed])
                    for k in value if k not in allowed]
        if isinstance(value.get("init_args"), dict):
            problems += _unknown_in_params(value["init_args"], params, f"{where}.init_args")
        return problems
    dataclass_types = [m for m in classes if dataclasses.is_dataclass(m)]
    if len(dataclass_types) == 1 and len(classes) == 1:
        params = _parameters(dataclass_types[0])
        return _unknown_in_params(value, params, where) if params is not None else []
    return []


def _unknown_in_params(values: dict[str, Any], params: dict[str, Any], where: str) -> list[tuple[str, list[str]]]:
    problems = []
    for key, value in values.items():
        if key not in params:
            problems.append((f"{where}.{key}", [f"{where}.{p}" for p in params]))
        else:
            problems += _unknown_in_value(value, params[key], f"{where}.{key}")
    return problems


def unknown_config_keys(config: dict[str, Any], parser: Any) -> list[tuple[str, list[str]]]:
    """Every key of a subcommand's config file that ``parser`` (the subcommand's) does not accept, each with the
    valid keys beside it, down into the ``init_args`` of every class the file names. jsonargparse reports only the
    first one it meets (under the whole usage text); this finds them all at once."""
    hints = {a.dest: getattr(a, "_typehint", None) for a in parser._actions
             if a.dest not in ("help", "config", "print_config", "version") and not a.dest.endswith(".help")}

    def walk(values: dict[str, Any], prefix: str) -> list[tuple[str, list[str]]]:
        problems = []
        for key, value in values.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and any(d.startswith(full + ".") for d in hints):
                problems += walk(value, full + ".")
            elif full in hints:
                problems += _unknown_in_value(value, hints[full], full) if hints[full] is not None else []
            else:
                beside = sorted({prefix + d[len(prefix):].split(".")[0] for d in hints if d.startswith(prefix)})
                problems.append((full, beside))
        return problems

    return walk(config, "")


def _check_config_files(argv: list[str], parsers: dict[str, Any]) -> None:
    """One :class:`~uplift.errors.ConfigError` naming every unknown key of the subcommand's ``--config`` files,
    with the closest valid key of each."""
    import difflib

    import yaml

    from uplift.errors import ConfigError

    subcommand = next((a for a in argv if a in parsers), None)
    if subcommand is None:
        return
    after = argv[argv.index(subcommand) + 1:]
    files = [b for a, b in zip(after, after[1:]) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in after if a.startswith("--config=")]
    for file in files:
        try:
            config = yaml.safe_load(Path(file).read_text())
        except Exception:  # missing or not YAML: jsonargparse says so
            continue
        if not isinstance(config, dict):
            continue
        problems = unknown_config_keys(config, parsers[subcommand])
        if problems:
            def named(key: str, valid: list[str]) -> str:
                close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                return f"{key} (did you mean {close[0]}?)" if close else key

            listed = ", ".join(named(k, v) for k, v in problems)
            raise ConfigError(f"{file}: unknown key{'s' if len(problems) > 1 else ''} {listed}. Fix the spelling; "
                              f"`uplift {subcommand} --help` lists the options.")


def _checked_ckpt_path(ckpt_path: Any) -> Any:
    """``--ckpt_path`` as a local file that is known to load with ``weights_only=True``, or one error naming it.

    A URL is downloaded (into torch's hub cache, where Lightning would put it) and then treated like a local file.
    The file is opened memory-mapped, so this reads the pickled structure, not the tensors: a truncated file or one
    holding code is refused here, in one line, before anything runs (and nothing in it executes)."""
    from uplift.checkpoints import read_checkpoint
    from uplift.errors import WeightsError, WeightsUnavailableError

    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc") or str(ckpt_path).startswith("registry"):
        return ckpt_path
    text = str(ckpt_path)
    if "://" in text:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(text.split("?")[0]).name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(text, str(local), progress=False)
            except Exception as err:
                raise WeightsUnavailableError(f"Could not download --ckpt_path {text} ({type(err).__name__}: "
                                              f"{str(err).splitlines()[0] if str(err) else ''}).") from err
        try:
            read_checkpoint(local, mmap=True)
        except WeightsError as err:
            raise WeightsError(f"--ckpt_path {text}: {err}") from None
        return str(local)
    read_checkpoint(ckpt_path, mmap=True)
    return ckpt_path


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

        def parse_arguments(self, parser: Any, args: Any) -> None:
            parsers = getattr(self, "_subcommand_parsers", None)  # None without subcommands (run=False)
            if parsers and not isinstance(args, dict):
                _check_config_files(self.argv, parsers)
            super().parse_arguments(parser, args)
            # before LightningCLI reads the checkpoint's hyperparameters (the next step) and before any work
            subcommand = self.config.get("subcommand")
            if subcommand and self.config[subcommand].get("ckpt_path") is not None:
                self.config[subcommand]["ckpt_path"] = _checked_ckpt_path(self.config[subcommand]["ckpt_path"])

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
    except KeyboardInterrupt:  # Ctrl-C outside a trainer's run (building the model, reading the data)
        print("uplift: interrupted by SIGINT outside the training loop; nothing was saved.", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if not report_user_error("uplift", err):
            raise
        raise SystemExit(2) from None


def run_cli(args: Optional[list[str]] = None) -> Any:
    """Run the CLI and return the LightningCLI object (its ``model``, ``datamodule``, ``trainer``)."""
    from argparse import ArgumentError

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
                # exit_on_error=False: a bad option is a ConfigError (one line from `main`), not the usage text
                parser_kwargs={"description": "UPLiFT: train feature upsamplers, evaluate them with probes, write dense "
                                              "features.", "exit_on_error": False},
                auto_configure_optimizers=False,
                args=args,
            )
        except SIGTERMException as stop:  # Lightning's graceful stop, reached through one of our signals
            raise _interrupted(interruptions) from stop
        except SystemExit:  # Lightning exits(1) after a KeyboardInterrupt: a second Ctrl-C
            if interruptions.stopped_at_once:
                raise _interrupted(interruptions) from None
            raise
        except ArgumentError as err:  # jsonargparse's: an option or a config value it cannot take
            raise _argument_error(err, args) from None
        except RuntimeError as err:  # torch's strict load of --ckpt_path into a model it does not fit
            if not str(err).startswith("Error(s) in loading state_dict"):
                raise
            raise _mismatch(err) from None


def _mismatch(err: RuntimeError) -> Exception:
    """torch's ``load_state_dict`` error (a long listing) as one :class:`~uplift.errors.CheckpointMismatchError`."""
    from uplift.errors import CheckpointMismatchError

    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    shown = "; ".join(p[:200] for p in problems[:3]) + (f"; ... ({len(problems)} problems)" if len(problems) > 3
                                                         else "")
    return CheckpointMismatchError(f"The --ckpt_path checkpoint does not fit the configured model (is it the "
                                   f"checkpoint of another task, or of another width or depth?): {shown}. Use the "
                                   f"config the checkpoint was trained with.")


def _argument_error(err: Any, args: Optional[list[str]]) -> Exception:
    """jsonargparse's parse error as one line of :class:`~uplift.errors.ConfigError`: its message without the value
    dumps and the Union bookkeeping."""
    from uplift.errors import ConfigError

    noise = ("Given value", "Subtypes:", "Errors:", "Does not validate against any of the Union subtypes",
             "- Expected a <class 'NoneType'>")
    lines = [line.strip().lstrip("- ") for line in str(err.message if hasattr(err, "message") else err).splitlines()
             if line.strip() and not line.strip().startswith(noise)]
    argv = sys.argv[1:] if args is None else [str(a) for a in args]
    subcommand = next((a for a in argv if a in ("fit", "validate", "test", "predict")), None)
    tip = f"`uplift {subcommand} --help` lists the options." if subcommand else "`uplift --help` lists the commands."
    return ConfigError(" ".join(lines).rstrip(".") + f". {tip}")


def _interrupted(interruptions: Any) -> Exception:
    """The :class:`~tasks.callbacks.RunInterrupted` of a run that a signal stopped: where it saved, how to resume."""
    import signal

    from lightning.pytorch.callbacks import ModelCheckpoint

    from tasks.callbacks import RunInterrupted

    trainer = interruptions._trainer
    callbacks = [c for c in (trainer.callbacks if trainer else []) if isinstance(c, ModelCheckpoint)]
    step = trainer.global_step if trainer is not None else "?"
    if interruptions.stopped_at_once:  # nothing saved now: the last checkpoint written before, if any
        found = [Path(p) for c in callbacks for p in (c.last_model_path, c.best_model_path) if p]
        found += [Path(c.dirpath) / "last.ckpt" for c in callbacks if c.dirpath]
        earlier = next((str(p) for p in found if p.is_file()), None)
        where = (f"resume from the last checkpoint written before, {earlier}: the same command and `--ckpt_path "
                 f"{earlier}`." if earlier else
                 "no checkpoint had been written, so a new run starts from the beginning.")
        which = "a second SIGINT" if interruptions.received is not None else "SIGINT"
        return RunInterrupted(f"stopped at once by {which} at step {step}, without saving the batch in flight; {where}",
                              signal.SIGINT)
    signum = interruptions.received or signal.SIGTERM
    saved = [c.last_model_path for c in callbacks if c.last_model_path]
    where = (f"its state at step {step} is saved in {saved[0]}; resume with the same command and `--ckpt_path {saved[0]}`."
             if saved else "no checkpoint callback was configured, so nothing was saved (add tasks.callbacks.RunCheckpoint).")
    return RunInterrupted(f"interrupted by {signal.Signals(signum).name} at step {step}: {where}", signum)

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
