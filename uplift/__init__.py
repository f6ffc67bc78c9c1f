"""UPLiFT: efficient pixel-dense feature upsampling with Local Attenders.

The core (this package) is plain PyTorch: it imports without Lightning, and timm/diffusers are
imported only when a backbone is built.

    >>> from uplift import UPLiFT
    >>> model = UPLiFT.from_pretrained("dinov2-s14")          # released weights from the hub
    >>> dense = model(image, features, output_size=image.shape[-2:])
"""

from uplift.attender import NEIGHBOURHOODS, LocalAttender, local_attend, local_attend_reference
from uplift.checkpoints import CheckpointMismatchError
from uplift.config import PRESETS, BlockGroupConfig, RefinerConfig, UPLiFTConfig
from uplift.hub import RELEASES, WeightsUnavailableError
from uplift.model import UPLiFT

__version__ = "0.1.0"

__all__ = [
    "NEIGHBOURHOODS",
    "PRESETS",
    "RELEASES",
    "BlockGroupConfig",
    "CheckpointMismatchError",
    "LocalAttender",
    "RefinerConfig",
    "UPLiFT",
    "UPLiFTConfig",
    "WeightsUnavailableError",
    "local_attend",
    "local_attend_reference",
    "__version__",
]
