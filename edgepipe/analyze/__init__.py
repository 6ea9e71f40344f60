"""Static analysis of converted models: parameters, MACs and activation memory, per layer."""

from edgepipe.analyze.static import analyze

__all__ = ["analyze"]
