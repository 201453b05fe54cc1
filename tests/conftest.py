"""Shared fixtures: one small synthetic cohort per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conf import load_config, to_object
from conf.schema import CohortConfig

PLINK = shutil.which("plink1.9") or shutil.which("plink")
requires_plink = pytest.mark.skipif(PLINK is None, reason="plink1.9 is not installed")


def small_cohort_config(**changes: object) -> CohortConfig:
    """The ``small`` preset (4 mm voxels) with enough controls per site to detect HWE plants."""
    cfg: CohortConfig = to_object(
        load_config(config_name="simulate", overrides="cohort=small").cohort
    )
    base = replace(cfg, subjects_per_site=[48, 40, 52], n_background_snps=600, workers=1)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests, restored after (use with pytestmark)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulations.cohort import simulate_cohort

    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(small_cohort_config(), out, seed=11)
    return out


# Whole modules that run a federation, a study or a deployment (Flower processes, minutes
# each on 2 CPU cores): marked ``slow`` so ``pytest -m "not slow"`` is the quick loop.
SLOW_MODULES = (
    "tests/server/test_federation.py",
    "tests/studies/",
    "tests/deployment/",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).resolve().relative_to(root).as_posix()
        if where.startswith(SLOW_MODULES):
            item.add_marker(pytest.mark.slow)
