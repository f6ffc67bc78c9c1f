"""``make demo``: train UPLiFT for a few minutes on bundled photos and show what it learned.

Runs ``uplift fit --config configs/quickstart.yaml``; then scores UPLiFT against bilinear
upsampling on the held-out photos and writes the PCA picture (image | backbone features | every
upsampling step) of one held-out photo. When the hub cannot be reached, the backbone is randomly
initialised instead of pretrained, and the demo says so loudly: the pipeline still runs end to end,
but the features (and so the numbers) mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from uplift.hub import WeightsUnavailableError

BANNER = "=" * 100


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, so an offline machine is told in seconds rather than after
    the download client's retries (~1 minute)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def backbone_available(name: str) -> tuple[bool, str]:
    from tasks.common import BackboneConfig

    try:
        BackboneConfig(name=name, pretrained=True).build()
    except WeightsUnavailableError as err:
        return False, str(err).splitlines()[0]
    return True, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--out", default=None, help="where to write the PCA picture (default: <run folder>/demo_pca.png)")
    args, extra = parser.parse_known_args(argv)  # anything else goes to `uplift fit`, e.g. --trainer.max_steps=20

    import yaml

    from tasks.cli import run_cli

    backbone = yaml.safe_load(Path(args.config).read_text())["model"]["init_args"]["backbone"]["name"]
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # fail fast: use only what is cached locally
    pretrained, reason = backbone_available(backbone)
    overrides = list(extra)
    if not pretrained:
        print(f"\n{BANNER}\nOFFLINE: the {backbone} weights could not be downloaded ({reason}).\n"
              f"Continuing with a RANDOMLY INITIALISED backbone: the pipeline runs, its numbers mean nothing.\n{BANNER}\n",
              flush=True)
        overrides.append("--model.init_args.backbone.pretrained=false")
    if not any(o.startswith("--trainer.default_root_dir") for o in overrides):
        # a new run folder each time: a fit never writes over an earlier run (runs/demo/1, runs/demo/2, ...)
        number = 1 + max((int(p.name) for p in Path("runs/demo").glob("*") if p.name.isdigit()), default=0)
        overrides.append(f"--trainer.default_root_dir=runs/demo/{number}")

    cli = run_cli(["fit", "--config", args.config, *overrides])
    task, data, trainer = cli.model, cli.datamodule, cli.trainer
    metrics = trainer.validate(task, data, verbose=False)[0]

    from uplift.visualize import save_png

    # the most colourful held-out photo makes the clearest picture
    photo = max((data.val_set[i] for i in range(len(data.val_set))), key=lambda p: float(p["image"].std(0).mean()))
    out = args.out or Path(trainer.default_root_dir) / "demo_pca.png"
    picture = save_png(task.pca_picture(photo["image"].to(task.device)).cpu(), out)
    ours, bilinear = metrics["val/mse_uplift"], metrics["val/mse_bilinear"]
    verdict = "below" if ours < bilinear else "NOT below"
    print(f"\n{BANNER}\nUPLiFT demo summary")
    print(f"  backbone      : {backbone} ({'pretrained' if pretrained else 'RANDOM INIT: hub unreachable'})")
    print(f"  trained for   : {trainer.global_step} steps, depths {task.depths}, on {len(data.train_set)} photos")
    print(f"  held-out MSE  : UPLiFT {ours:.4f} | bilinear {bilinear:.4f} over {len(data.val_set)} held-out photos "
          f"(ratio {ours / bilinear:.3f}: UPLiFT is {verdict} bilinear)")
    print(f"  PCA picture   : {picture} ({photo['name']}: image | backbone features | each 2x step)")
    print(f"  checkpoints   : {Path(trainer.default_root_dir) / 'checkpoints'}\n{BANNER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
