"""LightningModules for training UPLiFT and evaluating it with probes."""

from tasks.common import BackboneConfig
from tasks.predictive import PredictiveTask

__all__ = ["BackboneConfig", "PredictiveTask"]
