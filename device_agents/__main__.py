"""Entry point of the agent as one file: edgepipe zips this folder (this file and ``edgepipe_agent/``) into
``edgepipe_agent-<version>-<sha12>.pyz`` and runs that on the board with ``python3 <file>.pyz``. From a source
checkout the folder itself runs the same way: ``python3 device_agents run -``."""

import sys

from edgepipe_agent.cli import main

sys.exit(main(sys.argv))
