"""LightningModules for training UPLiFT (and the LiFT baseline) and evaluating them with probes."""

from tasks.base import FrozenBackboneTask
from tasks.common import BackboneConfig
from tasks.generative import GenerativeTask
from tasks.lift import LiFTTask
from tasks.predictive import PredictiveTask
from tasks.probes import SegmentationProbeTask

__all__ = ["BackboneConfig", "FrozenBackboneTask", "GenerativeTask", "LiFTTask", "PredictiveTask",
           "SegmentationProbeTask"]
