"""What `flwr run .` ships: the FAB must hold every data file the apps read at run time.

SuperLinks and SuperNodes import the ServerApp and ClientApp from the installed FAB, whose
folder comes first on ``sys.path``; a package-data file missing from the FAB is missing at
every site, even when the project is installed beside Flower.
"""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).parents[2]
# The packages the ServerApp and the ClientApp import (g2i-simulate runs outside Flower).
APP_PACKAGES = ("client", "server", "conf", "preprocessing", "g2i_models")


def _package_data() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["*"]
    return sorted(
        path.relative_to(REPO).as_posix()
        for package in APP_PACKAGES
        for pattern in patterns
        for path in (REPO / package).rglob(pattern)
        if "__pycache__" not in path.parts
    )


def test_fab_holds_the_package_data_the_apps_read() -> None:
    from flwr.cli.build import build_fab_from_disk

    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO)))
    missing = [path for path in _package_data() if path not in fab.namelist()]
    assert not missing, f"package data left out of the FAB: {missing}"
