"""bench/bit_identity.py, the proof that a refactor leaves CPU training bit-identical: a small part of its
matrix against the committed HEAD, and its comparison catching a one-ulp change and a changed log."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "bit_identity.py"


def _module():
    spec = importlib.util.spec_from_file_location("bit_identity", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True
    ).returncode == 0


@pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout (the script compares two commits)")
def test_two_cases_of_the_matrix_are_identical_to_head(isolated_env):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--against", "HEAD", "--cases", "defaults", "resume"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "defaults" in result.stdout and "resume" in result.stdout
    assert result.stdout.count(" identical ") == 2 and "all identical" in result.stdout


def test_the_comparison_finds_a_changed_weight_and_a_changed_log(tmp_path, isolated_env):
    mod = _module()
    mod.run_matrix(tmp_path / "a", ["defaults"])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert mod.compare_case(tmp_path / "a" / "defaults", tmp_path / "b" / "defaults") == []

    final = tmp_path / "b" / "defaults" / "checkpoints" / "final.pt"
    ckpt = torch.load(final, weights_only=True)
    name, weight = next(iter(ckpt["G"].items()))
    first = (0,) * weight.dim()
    weight[first] = torch.nextafter(weight[first], torch.tensor(float("inf")))  # one ulp up
    torch.save(ckpt, final)
    log = tmp_path / "b" / "defaults" / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")
    problems = mod.compare_case(tmp_path / "a" / "defaults", tmp_path / "b" / "defaults")
    assert f"final.pt: /G/{name} differs" in problems
    assert any("metrics.jsonl differs" in p for p in problems)
