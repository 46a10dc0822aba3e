"""`ganforge export`: a generator as .safetensors (weights + config, no pickle) that loads back the same."""

from __future__ import annotations

import pytest
import torch

from ganforge import build_config, load, train
from ganforge.checkpoint import CheckpointError
from ganforge.cli import main
from ganforge.sample import export_safetensors
from tests.conftest import tiny


def test_export_round_trip_gives_the_same_samples(tmp_path, isolated_env, capsys):
    overrides = tiny(tmp_path, ema_beta=0.9)
    overrides["model"]["conditional"] = True
    run = train(build_config(overrides=overrides), progress=False)
    assert main(["export", str(run)]) == 0
    out = run / "generator.safetensors"
    assert out.is_file() and "ganforge.load" in capsys.readouterr().out
    original, exported = load(run), load(out)
    assert exported.num_classes == 10
    assert torch.equal(original.sample(6, seed=1, classes=3), exported.sample(6, seed=1, classes=3))
    raw = out.read_bytes()
    assert b"G_ema" in raw[:4096]  # the metadata says which weights were exported


def test_export_refuses_what_it_cannot_read(tmp_path, isolated_env):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a ganforge generator export"):
        load(other)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export_safetensors(tmp_path, tmp_path / "g.safetensors")
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 1


@pytest.mark.parametrize("conditional,codes,clusters", [(False, 0, 0), (True, 0, 0), (False, 8, 0), (False, 0, 4)])
def test_onnx_export_matches_pytorch(conditional, codes, clusters, tmp_path, isolated_env, capsys):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ganforge[onnx]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'ganforge[onnx]')")
    overrides = tiny(tmp_path, ema_beta=0.9)
    # codes: LatentCodes' erf/floor/gather; clusters: ClusterPrior's erf/cumsum/compare
    overrides["model"].update(conditional=conditional, latent_codes=codes, clusters=clusters)
    run = train(build_config(overrides=overrides), progress=False)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = run / "generator.onnx"
    assert "onnxruntime" in capsys.readouterr().out
    gen = load(run)
    z = torch.randn(5, gen.z_dim, generator=torch.Generator().manual_seed(3))  # another batch size than traced
    z[:, 0] = torch.tensor([-2.0, -0.3, 0.1, 0.9, 2.5])  # latent codes: several different codes
    c = torch.tensor([0, 3, 7, 9, 3])
    with torch.no_grad():
        expected = gen.G(z, c if conditional else None).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy(), **({"c": c.numpy()} if conditional else {})}
    assert [i.name for i in session.get_inputs()] == list(feeds)
    (images,) = session.run(["images"], feeds)
    assert images.shape == expected.shape == (5, 1, 28, 28)
    assert abs(images - expected).max() < 1e-4
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["ganforge_config"])["model"]["conditional"] is conditional
