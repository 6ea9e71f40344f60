"""Optimization stages (one module per TF-MOT technique) and the ``edgepipe optimize`` pipeline."""
