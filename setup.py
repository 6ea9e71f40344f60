"""Puts the device agent, the shipped targets and the preset recipes into the wheel.

They live at the top of the repository (``device_agents/``, ``targets/``, ``recipes/``) where a reader looks for
them; a built package carries copies under ``edgepipe/_shipped/``, which ``edgepipe.shipped`` finds first. All
other metadata is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"device_agents": "**/*.py", "targets": "*.yaml", "recipes": "*.yaml"}  # the agent: a folder and a package


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        for folder, pattern in SHIPPED.items():
            destination = Path(self.build_lib, "edgepipe", "_shipped", folder)
            for source in sorted(Path(folder).glob(pattern)):
                copy = destination / source.relative_to(folder)
                self.mkpath(str(copy.parent))
                self.copy_file(str(source), str(copy))


setup(cmdclass={"build_py": BuildWithShippedFiles})
