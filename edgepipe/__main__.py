"""``python -m edgepipe`` is the same as the ``edgepipe`` command."""

from edgepipe.cli import main

main()
