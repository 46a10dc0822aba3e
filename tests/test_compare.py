"""`ganforge compare`: a GAN and a VAE under one protocol -> table, JSON and side-by-side PNG."""

import json

import pytest
from PIL import Image

from ganforge.cli import main
from ganforge.config import build_config
from ganforge.train import train

from .conftest import tiny


@pytest.fixture
def two_runs(tmp_path, isolated_env):
    gan = train(build_config(overrides=tiny(tmp_path / "gan")), progress=False)
    vae_cfg = tiny(tmp_path / "vae")
    vae_cfg["loss"] = {"name": "elbo"}
    vae_cfg["model"]["conditional"] = True
    vae = train(build_config(overrides=vae_cfg), progress=False)
    return gan, vae


def test_compare_writes_one_table_json_and_png(two_runs, tmp_path, capsys):
    gan, vae = two_runs
    out = tmp_path / "cmp"
    code = main(["compare", str(gan), str(vae), "--n", "40", "--cas-per-class", "4", "--out", str(out)])
    assert code == 0
    table = (out / "compare.md").read_text()
    captured = capsys.readouterr()
    printed = captured.out
    # the terminal gets aligned columns, not raw Markdown (compare.md keeps that); stderr names the sample count
    assert "|" not in printed.split("written:")[0] and "FID ↓" in printed and "compare.md (this table in Markdown)" in printed
    assert "ganforge compare: 2 runs, 40 generated samples each" in captured.err
    assert "| model | dcgan28-classic (gan) | vae28 (vae, cond.) |" in table
    for row in ("FID ↓", "KID ↓", "precision (k=3) ↑", "recall (k=3) ↑", "classes covered ↑", "CAS ↑",
                "images seen", "training wall time"):  # fmt: skip
        assert f"| {row} |" in table, row
    assert "cas: n/a (unconditional generator)" in table
    assert "40 generated vs 40 real (mnist-5k:test)" in table

    report = json.loads((out / "compare.json").read_text())
    gan_run, vae_run = report["runs"]
    assert gan_run["family"] == "gan" and vae_run["family"] == "vae"
    assert gan_run["training"]["step"] == 6 and gan_run["training"]["nimg"] == 48
    assert gan_run["training"]["train_seconds"] > 0
    assert {r["metric"] for r in vae_run["results"]} >= {"fid", "kid", "precision", "recall", "cas"}
    assert "cas" not in {r["metric"] for r in gan_run["results"]}
    for run in report["runs"]:  # one protocol for all
        fid = next(r for r in run["results"] if r["metric"] == "fid")
        assert fid["n_generated"] == 40 and fid["reference"] == {"dataset": "mnist-5k", "split": "test", "n": 40}
    with Image.open(out / "compare.png") as png:
        assert png.size[0] > png.size[1]  # the grids side by side
    assert sorted(p.name for p in out.glob("*.eval.json")) == ["tiny-2.eval.json", "tiny.eval.json"]


def test_compare_refuses_one_run_and_mixed_datasets(two_runs, tmp_path, capsys):
    gan, _ = two_runs
    assert main(["compare", str(gan), "--out", str(tmp_path / "x")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    other = tiny(tmp_path / "c10")
    other["data"] = {"name": "ring8", "limit": 64}
    other["model"] = {"z_dim": 2}
    ring = train(build_config(overrides=other), progress=False)
    assert main(["compare", str(gan), str(ring), "--out", str(tmp_path / "x")]) == 2
    assert "trained on different data (mnist-5k, ring8)" in capsys.readouterr().err
    assert main(["compare", str(ring), str(ring), "--out", str(tmp_path / "x")]) == 2
    assert "PacGAN's mode protocol" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["compare", str(gan), str(gan), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_the_terminal_table_aligns_the_markdown_columns():
    from ganforge.metrics.compare import format_terminal

    md = "Protocol: x.\n\n| | a | bb |\n|---|---|---|\n| FID ↓ | **1.5** | 22.25 |\n| steps | 6 | 600 |\n\n- a: note"
    lines = format_terminal(md).splitlines()
    assert lines[0] == "Protocol: x." and lines[-1] == "- a: note"
    rows = [line for line in lines if line.startswith(("FID", "steps", " "))]
    assert [line.index("22.25" if "FID" in line else "600") for line in rows[1:]] == [rows[1].index("22.25"), rows[2].index("600")]
    assert "*1.5*" in lines[3] and "|" not in "".join(lines) and "---" not in "".join(lines)
    assert rows[1].index("*1.5*") == rows[2].index("6")  # one column, one start


def test_sampling_shows_a_progress_bar_on_a_terminal(monkeypatch):
    import io
    import sys

    import torch

    from ganforge.metrics import evaluate as ev

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    class G(torch.nn.Module):
        def forward(self, z, c=None):
            return torch.tanh(z[:, :1, None, None].expand(-1, 1, 28, 28))

    ev.generated_features(G(), torch.randn(2500, 4), lambda img: (img.float().flatten(1)[:, :3],
                          img.float().flatten(1)[:, :2]), torch.device("cpu"))  # fmt: skip
    assert "sampling + features" in term.getvalue() and "img" in term.getvalue()
    assert ev._progress(100, "x") is None  # small work: no bar
