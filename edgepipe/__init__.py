"""edgepipe: compress a Keras model with TF-MOT, convert it to full-integer TFLite, verify it, deploy it.

The Python API mirrors the command line (see ``edgepipe.api`` and the README's "Python API" section)::

    import edgepipe

    run = edgepipe.optimize("prune-qat", out="runs/pq")
    result = edgepipe.deploy(run.directory, target="local")
    edgepipe.report(run.directory)
    edgepipe.compare("main", str(run.directory)).raise_for_status()
    farm = edgepipe.farm_run("farms/lab.yaml", ["runs/candidate"], baseline="runs/main")   # farm.exit_code

Importing edgepipe imports neither TensorFlow nor paramiko: the functions load what they need when called.
Every error is an ``EdgepipeError`` (``message``, ``hint``, ``exit_code``); the tree is in ``edgepipe.errors``.
"""

from edgepipe.api import (
    Comparison,
    DeployResult,
    OptimizeResult,
    ReportResult,
    compare,
    deploy,
    optimize,
    report,
)
from edgepipe.errors import (
    AccuracyMismatch,
    AgentError,
    CommandError,
    ConfigError,
    ConformanceError,
    ConnectError,
    ConversionError,
    DeadlineExceeded,
    DeviceModelError,
    EdgepipeError,
    GateFailed,
    HostKeyError,
    Inconclusive,
    InfrastructureError,
    InvalidModel,
    ModelCrash,
    ModelError,
    ModelOutOfMemory,
    ModelTimeout,
    RegressionFound,
    TransferError,
    UnsupportedOp,
)
from edgepipe.farm import FarmOutcome, farm_resume, farm_run

__version__ = "0.1.0"

__all__ = [
    "AccuracyMismatch",
    "AgentError",
    "CommandError",
    "Comparison",
    "ConfigError",
    "ConformanceError",
    "ConnectError",
    "ConversionError",
    "DeadlineExceeded",
    "DeployResult",
    "DeviceModelError",
    "EdgepipeError",
    "FarmOutcome",
    "GateFailed",
    "HostKeyError",
    "Inconclusive",
    "InfrastructureError",
    "InvalidModel",
    "ModelCrash",
    "ModelError",
    "ModelOutOfMemory",
    "ModelTimeout",
    "OptimizeResult",
    "RegressionFound",
    "ReportResult",
    "TransferError",
    "UnsupportedOp",
    "__version__",
    "compare",
    "deploy",
    "farm_resume",
    "farm_run",
    "optimize",
    "report",
]
