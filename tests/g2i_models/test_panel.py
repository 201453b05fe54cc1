"""The SNP panel saved with a model: alleles from the catalog, pooled panels, header checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset

from g2i_models.autoencoder import build_autoencoder, set_scale_factor
from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.panel import dataset_panel, header_problem, panel_config
from g2i_models.pipeline import G2IPipeline
from g2i_models.unet import build_denoiser
from preprocessing.panel import CatalogSNP
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config

PANEL = {"snp_names": ["rs429358", "rs7412", "APOE_e4", "rsX"], "alleles": ["C", "C", "e4", None]}


def test_alleles_come_from_the_catalog() -> None:
    # The shipped catalog counts the C allele at both APOE SNPs.
    assert panel_config(["rs429358", "rs7412", "APOE_e4", "rsX"]) == PANEL
    own = [CatalogSNP("rs1", "G1", "1", 100, "T")]
    assert panel_config(["rs1", "rs429358"], own)["alleles"] == ["T", None]


def test_pooled_datasets_must_share_the_panel() -> None:
    a, b = SyntheticSliceDataset(n=2, n_snps=5), SyntheticSliceDataset(n=2, n_snps=5, seed=1)
    assert dataset_panel(ConcatDataset([a, b]))["snp_names"] == a.snp_names
    c = SyntheticSliceDataset(n=2, n_snps=6)
    with pytest.raises(ValueError, match="different SNP panels.*5 vs 6.*None vs snp5"):
        dataset_panel(ConcatDataset([a, ConcatDataset([b, c])]))


@pytest.mark.parametrize(
    "header",
    [
        ["rs429358", "rs7412", "APOE_e4", "rsX"],
        ["rs429358_C", " rs7412_C", "APOE_e4", "rsX_A"],  # PLINK --recode A names
    ],
)
def test_fitting_header(header: list[str]) -> None:
    assert header_problem(PANEL, header) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            ["rs7412", "rs429358", "APOE_e4", "rsX"],
            "column 1 is SNP rs7412 where the model has "
            "rs429358 (it has rs7412 at column 2); reorder",
        ),
        (["rs429358", "rs7412", "APOE_e4", "rs999"], "SNP rs999 (column 4) is not in the model"),
        (
            ["rs429358_T", "rs7412", "APOE_e4", "rsX"],
            "counts rs429358 allele T where the model counts C (alleles",
        ),
        (["rs429358", "rs7412"], "names 2 SNPs, the model has 4 (first missing: APOE_e4)"),
        ([*PANEL["snp_names"], "rs5"], "column 5 is 'rs5' but the model has only 4 SNPs"),
    ],
)
def test_misfitting_header_names_the_snp(header: list[str], expected: str) -> None:
    problem = header_problem(PANEL, header)
    assert problem is not None and expected in problem
    assert "model_index.json" in problem


def _parts() -> tuple:
    cfg = tiny_model_config(sample_steps=1)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    set_scale_factor(ae, 0.8)
    return ae, build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4), build_noise_scheduler(cfg)


def test_pipeline_saves_its_panel(tmp_path) -> None:
    panel = panel_config([f"rs{i}" for i in range(N_SNPS)])
    G2IPipeline.from_parts(*_parts(), panel=panel).save_pretrained(tmp_path)
    assert G2IPipeline.from_pretrained(tmp_path).config.panel == panel


def test_pipeline_refuses_a_panel_of_another_size() -> None:
    panel = panel_config([f"rs{i}" for i in range(N_SNPS + 1)])
    with pytest.raises(ValueError, match=f"names {N_SNPS + 1} SNPs.*takes {N_SNPS}"):
        G2IPipeline.from_parts(*_parts(), panel=panel)
