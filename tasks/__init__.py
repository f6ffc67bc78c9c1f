"""LightningModules for training UPLiFT and evaluating it with probes."""
