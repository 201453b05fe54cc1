import pytest

from studies.study import cell_summary, study_summary
from studies.study_report import summary_markdown


def _entry(variant: str, mode: str) -> dict:
    return {
        "variant": variant,
        "mode": mode,
        "privacy": "none",
        "training": {"train_wall_s": 12.0, "metrics": {"ldm_val_shuffle_e4": 4e-5}},
        "evaluation": {
            "effect": {
                "paired": {
                    "slope": 160.0,
                    "ratio": 0.8,
                    "ratio_ci_low": 0.6,
                    "ratio_ci_high": 1.0,
                },
                "steps": {"0->1": 150.0, "1->2": 170.0},
                "true_slope": 200.0,
                "truth": {
                    "attainable": {"ratio_at_fixed_dx": 0.8},
                    "calibration": {"ratio": 0.85},
                },
                "real": {
                    "slope": 120.0,
                    "ci_low": 40.0,
                    "ci_high": 200.0,
                    "within_diagnosis": {"slope": 100.0, "ci_low": 30.0, "ci_high": 170.0},
                },
            },
            "image": {"fid_kid": {"fid": 42.5}},
            "dx_area_mm2": {
                "generated": {"CN": 800.0, "MCI": 1100.0, "AD": 1600.0},
                "real": {"CN": 850.0, "MCI": 1150.0, "AD": 1650.0},
            },
            "downstream": {
                "real": {"accuracy": {"mean": 0.5}, "macro_f1": {"mean": 0.45}},
                "augmented": {"accuracy": {"mean": 0.57}},
                "synthetic": {"accuracy": {"mean": 0.41}},
                "gain_paired": {"accuracy": {"ci": [0.02, 0.12]}},
            },
            "memorisation": {"pixel": {"fraction_flagged": 0.03}},
        },
    }


def test_summary_keys_and_values_come_from_the_cells() -> None:
    results = {
        "federated-g2i_plus-none": _entry("g2i_plus", "federated"),
        "centralized-g2i_plus-none": _entry("g2i_plus", "centralized"),
        "broken": {"variant": "ldm_label", "mode": "federated", "privacy": "none", "error": "x"},
    }
    summary = study_summary(results)
    assert sorted(summary) == ["g2i_plus/centralized/none", "g2i_plus/federated/none"]
    s = summary["g2i_plus/federated/none"]
    assert s["e4_ratio"] == 0.8 and s["e4_ci"] == [0.6, 1.0]
    assert s["fid"] == 42.5 and s["dx_area_mm2"]["AD"] == 1600.0
    assert s["accuracy_real"] == 0.5 and s["accuracy_augmented"] == 0.57
    assert s["accuracy_synthetic_only"] == 0.41
    assert s["gain_ci"] == [0.02, 0.12] and s["memorised"] == 0.03
    assert s["e4_real_slope"] == 120.0 and s["e4_real_ci"] == [40.0, 200.0]
    assert s["e4_real_within_dx_slope"] == 100.0 and s["e4_real_within_dx_ci"] == [30.0, 170.0]
    assert s["e4_ratio_real_within_dx"] == pytest.approx(1.6)
    assert s["e4_ratio_attainable"] == 0.8 and s["e4_ratio_vs_attainable"] == pytest.approx(1.0)
    # What a perfect generator shows through a measurement that reads 0.85 of an area change.
    assert s["e4_ratio_attainable_measured"] == pytest.approx(0.68)
    assert s["e4_ratio_vs_attainable_measured"] == pytest.approx(0.8 / 0.68)
    assert cell_summary(results["broken"])["e4_ratio"] is None
    table = summary_markdown(summary)
    row = "| g2i_plus/federated/none | 0.80 [0.60, 1.00] | 1.60 | 1.00 | 1.18 | 150 / 170 | 42.5 |"
    assert row in table
    assert "50.0 -> 57.0 | [2.0, 12.0] | 41.0 | 0.030 |" in table
