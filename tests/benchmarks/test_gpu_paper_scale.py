"""The GPU benchmark's code paths, on tiny shapes on the CPU (``--smoke``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_paper_scale.py"


def load_script() -> ModuleType:
    """The script as a module (benchmarks/ is no package); dataclasses need it registered."""
    name = "benchmarks_gpu_paper_scale"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_refuses_without_a_gpu_unless_smoke(capsys) -> None:
    assert load_script().main(["--device", "cpu"]) == 2
    assert "--smoke" in capsys.readouterr().err


def test_peak_table_is_keyed_by_device_name() -> None:
    script = load_script()
    assert script.peak_tflops("NVIDIA H200") == (989.0, "H200")
    assert script.peak_tflops("NVIDIA A100-SXM4-80GB") == (312.0, "A100")
    assert script.peak_tflops("NVIDIA L4") == (121.0, "L4")
    assert script.peak_tflops("Some GPU") == (None, None)


# About 20 s of CPU (dynamo traces the tiny networks for the compile rows).
@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_smoke_runs_every_part(tmp_path) -> None:
    out = tmp_path / "smoke.json"
    assert load_script().main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "CPU"
    variants = {(r["phase"], r["variant"]) for r in result["training"]}
    for phase in ("ae", "ldm"):
        assert (phase, "bf16 + channels-last + compile") in variants
    for row in result["training"]:
        assert row["images_per_s"] > 0 and row["gflops_per_image_step"] > 0
    assert {r["batch_size"] for r in result["generation"]} == {1, 4}
    assert all(r["images_per_s"] > 0 for r in result["generation"])
    fed = result["federated_round"]
    assert fed["sites"] == 3 and len(fed["ae_site_seconds"]) == 3 and fed["round_seconds"] > 0
