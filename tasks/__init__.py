"""LightningModules for training UPLiFT and evaluating it with probes."""

from tasks.common import BackboneConfig
from tasks.generative import GenerativeTask
from tasks.predictive import PredictiveTask
from tasks.probes import SegmentationProbeTask

__all__ = ["BackboneConfig", "GenerativeTask", "PredictiveTask", "SegmentationProbeTask"]
