"""Puts the device agent, the shipped targets and the preset recipes into the wheel.

They live at the top of the repository (``device_agents/``, ``targets/``, ``recipes/``) where a reader looks for
them; a built package carries copies under ``edgepipe/_shipped/``, which ``edgepipe.shipped`` finds first. All
other metadata is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {"device_agents": "*.py", "targets": "*.yaml", "recipes": "*.yaml"}


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        for folder, pattern in SHIPPED.items():
            destination = Path(self.build_lib, "edgepipe", "_shipped", folder)
            self.mkpath(str(destination))
            for source in sorted(Path(folder).glob(pattern)):
                self.copy_file(str(source), str(destination / source.name))


setup(cmdclass={"build_py": BuildWithShippedFiles})
