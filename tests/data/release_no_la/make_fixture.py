"""Make the "No LA" parity fixture by running the UPLiFT reference release (github.com/mwalmer-umd/UPLiFT at
85f09ee) in a scratch folder: a small DINOv2-shaped model with ``attender: -1`` (no Local Attender; the decoder
ends in its 1x1 ``outc`` conv with the channel residual), random weights and BatchNorm statistics, two steps.

    git -C <release checkout> archive 85f09ee | tar -x -C /tmp/release
    pip install --target /tmp/scratchpkgs omegaconf
    PYTHONPATH=/tmp/release:/tmp/scratchpkgs python tests/data/release_no_la/make_fixture.py

Writes ``no_la.yaml``, ``no_la.weights.safetensors`` and ``no_la.case.safetensors`` (inputs and the outputs of
steps 1 and 2) beside this file. Nothing here is the release's code: it only calls it.
"""

from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import save_file

from uplift.uplift import UPLiFT  # the release's package (PYTHONPATH), not this repository's

HERE = Path(__file__).resolve().parent
single = lambda w: {"block": "SingleConv", "norm": "batch", "count": 1, "hc": [w]}  # noqa: E731
double = lambda w: {"block": "DoubleConv", "norm": "batch", "count": 1, "hc": [w]}  # noqa: E731
none = {"down_op": "none", "factor": 1.0, "residual": "none"}
CONFIG = {
    "description": "No LA parity fixture (attender -1)",
    "backbone": {"channel": 16, "patch": 14, "stride": 14},
    "uplift": {
        "up_factor": 2, "attender": -1, "enc_share": True,
        "encoder": {"down_steps": 4, "block_0": single(4), "down_1": none, "block_1": single(8), "down_2": none,
                    "block_2": single(8), "down_3": none, "block_3": single(12), "down_4": none, "block_4": single(12)},
        "decoder": {"up_steps": 1, "enc_resample": "nearest", "ncat_c": 0, "ncat_s": 1.0, "block_0": double(24),
                    "up_1": {"up_op": "tconv", "factor": 2, "residual": "bilinear"}, "block_1": double(24)},
    },
}

torch.manual_seed(0)
model = UPLiFT(16, 14, OmegaConf.create(CONFIG).uplift)
g = torch.Generator().manual_seed(1)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.weight.data.copy_(torch.randn(m.num_features, generator=g))
        m.bias.data.copy_(torch.randn(m.num_features, generator=g))
model.eval()
model.enable_iterative(2)
model.return_steps(True)
image, features = torch.randn(1, 3, 56, 70, generator=g), torch.randn(1, 16, 4, 5, generator=g)
with torch.no_grad():
    steps = model(image, features)
(HERE / "no_la.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(HERE / "no_la.weights.safetensors"))
save_file({"input.image": image, "input.features": features,
           **{f"output.step{k + 1}": s.contiguous() for k, s in enumerate(steps)}},
          str(HERE / "no_la.case.safetensors"), metadata={"source": "mwalmer-umd/UPLiFT@85f09ee", "steps": "2"})
print({k: tuple(v.shape) for k, v in model.state_dict().items() if "outc" in k}, [tuple(s.shape) for s in steps])
