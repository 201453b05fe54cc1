"""g2i-generate turns bad input into one-line messages (exit 2), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from g2i_models.autoencoder import build_autoencoder, set_scale_factor
from g2i_models.cli import generate_main
from g2i_models.diffusion import build_noise_scheduler
from g2i_models.panel import panel_config
from g2i_models.pipeline import G2IPipeline
from g2i_models.unet import build_denoiser
from tests.g2i_models.tiny import IMAGE_SIZE, N_SNPS, tiny_model_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_model_config(sample_steps=1)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg, IMAGE_SIZE)
    set_scale_factor(ae, 0.8)
    den = build_denoiser(cfg, N_SNPS, IMAGE_SIZE // 4)
    pipe = G2IPipeline.from_parts(
        ae,
        den,
        build_noise_scheduler(cfg),
        sample_steps=1,
        allele_freqs=[0.3] * N_SNPS,
        panel=panel_config(NAMES),
    )
    out = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(out)
    return out


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = generate_main(args)
    err = capsys.readouterr().err.strip()
    return code, err


ROW = ",".join(["1"] * N_SNPS)
NAMES = [f"rs{i}" for i in range(N_SNPS)]


@pytest.mark.parametrize(
    ("content", "message", "line"),
    [
        ("", "empty file", None),
        (",".join(f"rs{i}" for i in range(N_SNPS)) + "\n", "only a header", "line 1"),
        (f"{ROW}\n{','.join(['1'] * (N_SNPS - 1) + ['7'])}\n", "genotype value '7'", "line 2"),
        (f"{ROW}\n1,2\n", f"where the model has {N_SNPS} SNPs", "line 2"),
        (",".join([NAMES[1], NAMES[0], *NAMES[2:]]) + f"\n{ROW}\n", "reorder", "line 1"),
        (",".join([*NAMES[:-1], "rs999"]) + f"\n{ROW}\n", "SNP rs999 (column", "line 1"),
    ],
)
def test_bad_genotype_csv_is_one_line_naming_file_and_row(
    content: str,
    message: str,
    line: str | None,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    csv = tmp_path / "g.csv"
    csv.write_text(content)
    code, err = _run([str(model_dir), "--genotypes", str(csv), "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert str(csv) in err and message in err
    if line:
        assert line in err
    assert not (tmp_path / "samples.pt").exists()


def test_missing_model_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    code, err = _run([str(missing), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and str(missing) in err and "model_index.json" in err
    (tmp_path / "run" / "model").mkdir(parents=True)
    code, err = _run([str(tmp_path / "run"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "RUN/model" in err


def test_good_csv_with_header_and_bom_generates_those_genotypes(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "g.csv"
    header = ",".join(f"rs{i}" for i in range(N_SNPS))
    rows = [[i % 4 for i in range(N_SNPS)], [2] * N_SNPS]
    body = "\n".join(",".join(map(str, r)) for r in rows)
    csv.write_bytes(("\ufeff" + header + "\n" + body + "\n").encode("utf-8"))
    out = tmp_path / "gen"
    code = generate_main([str(model_dir), "--genotypes", str(csv), "--out", str(out)] +
                         ["--per-class", "1", "--labels", "0", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = torch.load(out / "samples.pt")
    assert saved["genotypes"].tolist() == rows
    assert saved["labels"].tolist() == [0, 2]
