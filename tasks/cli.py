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


def _cli_class() -> type:
    from lightning.pytorch.cli import LightningCLI

    import uplift

    class UPLiFTCLI(LightningCLI):
        """LightningCLI in subclass mode (``model.class_path``/``data.class_path`` in the YAML).

        ``use_distributed_sampler`` defaults to off: our datamodules shard across ranks themselves
        with a sampler that also makes mid-epoch ``--ckpt_path`` resumption exact.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            given = kwargs.get("args")
            self.argv = [str(a) for a in (sys.argv[1:] if given is None else given)]
            super().__init__(*args, **kwargs)

        def init_parser(self, **kwargs: Any):
            parser = super().init_parser(**kwargs)
            parser.add_argument("--version", action="version", version=f"uplift {uplift.__version__}")
            return parser

        def add_arguments_to_parser(self, parser: Any) -> None:
            """Values a task and its data must agree on, set in one place. A link applies only when the configured
            classes both have its keys (other configs are untouched); its target cannot be set by hand."""
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
    """Entry point of ``uplift``. Bad input ends in one ``uplift: error: ...`` message (exit 2);
    set ``UPLIFT_TRACEBACK=1`` to see the full traceback instead."""
    try:
        run_cli(args)
    except Exception as err:
        user = user_error(err)
        if user is None or os.environ.get("UPLIFT_TRACEBACK"):
            raise
        print(f"uplift: error: {user}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(args: Optional[list[str]] = None) -> Any:
    """Run the CLI and return the LightningCLI object (its ``model``, ``datamodule``, ``trainer``)."""
    import lightning as L

    cli_class = _cli_class()
    # Called from Python (demo, Table 1 driver) the process's own argv is the driver's; it must stay
    # as it is (DDP re-launches the process with it), so only the warning about it is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return cli_class(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False},
            parser_kwargs={"description": "UPLiFT: train feature upsamplers, evaluate them with probes, write dense features."},
            auto_configure_optimizers=False,
            args=args,
        )

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
