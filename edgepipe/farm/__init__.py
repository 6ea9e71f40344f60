"""The device farm: many models on many boards in one regression run (``edgepipe farm``).

``config.farm`` reads the farm file; ``store`` keeps runs, jobs, attempts, leases and quarantines in the results
history; ``scheduler`` runs one worker per board; ``jobs`` measures one model on one board; ``report`` writes
the matrix and decides the exit code; ``controller`` ties them together for ``farm run`` and ``farm resume``.
"""

from edgepipe.farm.controller import FarmOutcome, farm_resume, farm_run

__all__ = ["FarmOutcome", "farm_resume", "farm_run"]
