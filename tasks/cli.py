"""The ``uplift`` command: LightningCLI with the task and data classes named in the YAML.

    uplift fit --config configs/quickstart.yaml
    uplift validate --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt
    uplift predict --config configs/quickstart.yaml --ckpt_path ... --data.predict_root my_images/

Lightning is imported here, not in ``uplift/__init__``: the core stays importable without it.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Optional

__all__ = ["main", "run_cli"]


def _cli_class() -> type:
    from lightning.pytorch.cli import LightningCLI

    import uplift

    class UPLiFTCLI(LightningCLI):
        """LightningCLI in subclass mode (``model.class_path``/``data.class_path`` in the YAML).

        ``use_distributed_sampler`` defaults to off: our datamodules shard across ranks themselves
        with a sampler that also makes mid-epoch ``--ckpt_path`` resumption exact.
        """

        def init_parser(self, **kwargs: Any):
            parser = super().init_parser(**kwargs)
            parser.add_argument("--version", action="version", version=f"uplift {uplift.__version__}")
            return parser

    return UPLiFTCLI


def _user_error(err: BaseException) -> Optional[BaseException]:
    """The error meant for the user (bad input, missing data or weights) in ``err``'s chain.

    jsonargparse wraps errors raised while building the configured classes in a long "does not
    validate against any of the Union subtypes" message; the user needs only the original one. Our
    own errors (which already say what to do) win over the library errors they wrap.
    """
    from uplift.checkpoints import CheckpointMismatchError
    from uplift.hub import WeightsUnavailableError
    from uplift.upsamplers import UpsamplerUnavailableError

    ours = (WeightsUnavailableError, UpsamplerUnavailableError, CheckpointMismatchError)
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
        user = _user_error(err)
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
