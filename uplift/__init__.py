"""UPLiFT: efficient pixel-dense feature upsampling with Local Attenders.

The core (this package) is plain PyTorch: it imports without Lightning, and timm/diffusers are
imported only when a backbone is built.

    >>> from uplift import FeatureExtractor
    >>> extractor = FeatureExtractor("dinov2-s14")            # released UPLiFT + its backbone, from the hub
    >>> features = extractor("photo.jpg")                     # [384, H, W]: one feature per pixel

    >>> from uplift import UPLiFT                              # the upsampler alone
    >>> model = UPLiFT.from_pretrained("dinov2-s14")
    >>> dense = model(image, features, output_size=image.shape[-2:])
"""

from uplift.attender import NEIGHBOURHOODS, LocalAttender, local_attend, local_attend_reference
from uplift.checkpoints import load_uplift
from uplift.config import PRESETS, BlockGroupConfig, RefinerConfig, UPLiFTConfig
from uplift.errors import (CheckpointMismatchError, ConfigError, InputError, UPLiFTError, UpsamplerUnavailableError,
                           WeightsError, WeightsUnavailableError)
from uplift.extractor import FeatureExtractor, Features, dense_features, pca_image
from uplift.hub import RELEASES
from uplift.model import UPLiFT

__version__ = "0.1.0"

__all__ = [
    "NEIGHBOURHOODS",
    "PRESETS",
    "RELEASES",
    "BlockGroupConfig",
    "CheckpointMismatchError",
    "ConfigError",
    "FeatureExtractor",
    "Features",
    "InputError",
    "LocalAttender",
    "RefinerConfig",
    "UPLiFT",
    "UPLiFTConfig",
    "UPLiFTError",
    "UpsamplerUnavailableError",
    "WeightsError",
    "WeightsUnavailableError",
    "dense_features",
    "load_uplift",
    "local_attend",
    "local_attend_reference",
    "pca_image",
    "__version__",
]
