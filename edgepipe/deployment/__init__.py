"""Deploying a model to a board: content-addressed uploads, the device agent's job, the result record."""

from edgepipe.deployment.runner import SCHEMA, DeployOutcome, deploy

__all__ = ["SCHEMA", "DeployOutcome", "deploy"]
