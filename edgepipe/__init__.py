"""edgepipe: compress a Keras model with TF-MOT, convert it to full-integer TFLite, verify it, deploy it.

Importing edgepipe does not import TensorFlow; the modules that need it import it through
``edgepipe.keras_compat`` when they are used. ``edgepipe.deployment.deploy`` and ``edgepipe.targets.load_target``
are the library entry points for deploying; they import neither TensorFlow nor (for local targets) paramiko.
"""

from edgepipe.errors import (
    ConfigError,
    ConformanceError,
    ConversionError,
    DeviceModelError,
    EdgepipeError,
    GateFailed,
    InfrastructureError,
    ModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConformanceError",
    "ConversionError",
    "DeviceModelError",
    "EdgepipeError",
    "GateFailed",
    "InfrastructureError",
    "ModelError",
    "__version__",
]
