"""The command line end to end, as a user runs it (subprocesses)."""

import json
import os
import subprocess
import sys

import pytest
import yaml


def run(*args, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "ganforge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def offline_env(isolated_env):
    return {"XDG_CACHE_HOME": str(isolated_env / "cache")}


TINY = [
    "--data",
    "mnist-5k",
    "--steps",
    "4",
    "--device",
    "cpu",
    "--no-progress",
    "--set",
    "model.g_channels=4",
    "model.d_channels=4",
    "train.batch_size=8",
    "data.limit=32",
]


def test_train_then_sample(tmp_path, offline_env):
    r = run("train", *TINY, "--runs-dir", str(tmp_path), "--name", "cli", env_extra=offline_env)
    assert r.returncode == 0, r.stderr
    assert "done. Samples:" in r.stderr
    run_dir = tmp_path / "cli"
    assert (run_dir / "samples.png").is_file()
    out = tmp_path / "grid.png"
    r = run(
        "sample",
        str(run_dir),
        "--n",
        "9",
        "--out",
        str(out),
        "--seed",
        "1",
        "--individual",
        str(tmp_path / "each"),
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(out).size[0] > 0
    assert len(list((tmp_path / "each").glob("*.png"))) == 9
    r = run("sample", str(tmp_path), "--out", str(out))
    assert r.returncode == 1 and "holds no checkpoint" in r.stderr and "Traceback" not in r.stderr
    r = run("sample", str(run_dir), "--class", "7", "--out", str(out))
    assert r.returncode == 2 and "unconditional" in r.stderr and "Traceback" not in r.stderr


def test_conditional_and_point_runs_from_the_cli(tmp_path, offline_env):
    r = run("train", *TINY, "--set", "model.conditional=true", "--runs-dir", str(tmp_path), "--name", "cond",
            env_extra=offline_env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "sevens.png"
    r = run("sample", str(tmp_path / "cond"), "--class", "7", "--n", "4", "--out", str(out))
    assert r.returncode == 0 and out.is_file(), r.stderr
    r = run("sample", str(tmp_path / "cond"), "--class", "12", "--out", str(out))
    assert r.returncode == 2 and "classes 0..9" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--data", "grid25", "--steps", "20", "--no-progress", "--runs-dir", str(tmp_path),
            "--name", "pts", env_extra=offline_env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run("eval", str(tmp_path / "pts"), "--n", "500")
    assert r.returncode == 0 and "modes_covered" in r.stdout and "PacGAN grid25" in r.stdout, r.stderr
    assert "not PacGAN's 2,500" in r.stderr and "not comparable" in r.stdout  # another n is said, both places
    r = run("eval", str(tmp_path / "pts"))  # PacGAN's own count by default
    assert r.returncode == 0 and "2,500 samples (the paper's: 2,500)" in r.stdout and "warning" not in r.stderr
    assert json.loads((tmp_path / "pts" / "eval.json").read_text())["protocol"]["n_generated"] == 2500
    r = run("sample", str(tmp_path / "pts"), "--n", "300", "--out", str(tmp_path / "pts.png"),
            "--individual", str(tmp_path / "pts.npy"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    import numpy as np

    assert np.load(tmp_path / "pts.npy").shape == (300, 2)


def test_presets_lists_the_seed_presets():
    r = run("presets")
    assert r.returncode == 0
    assert "seed-mnist" in r.stdout and "seed-cifar" in r.stdout


def test_dry_run_prints_the_resolved_config(tmp_path, offline_env):
    r = run(
        "train",
        "--dry-run",
        "--preset",
        "seed-mnist",
        "--data",
        "mnist-5k",
        "--set",
        "train.seed=5",
        env_extra=offline_env,
    )
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["model"]["name"] == "dcgan28" and cfg["train"]["seed"] == 5
    assert cfg["optim"]["g_lr"] == 1e-4 and cfg["data"]["channels"] == 1
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_from_the_cli(tmp_path, offline_env):
    r = run("train", "--data", "mnist", "--data-root", str(tmp_path), "--set", "data.download=false",
            env_extra={**offline_env, "GANFORGE_DATA": str(tmp_path)})  # fmt: skip
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr
    assert "Looked for train-images-idx3-ubyte" in r.stderr


def test_data_command(tmp_path, offline_env):
    out = tmp_path / "real.png"
    r = run("data", "mnist-5k", "--out", str(out), env_extra=offline_env)
    assert r.returncode == 0, r.stderr
    assert "4500" in r.stdout and "[1, 28, 28]" in r.stdout and "0: 450" in r.stdout
    assert out.is_file()


def test_help_explains():
    r = run("train", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "examples:" in r.stdout


def test_train_help_names_every_model_and_dataset():
    """--model and --data list every registered architecture and dataset, from the registries (made when
    the help is printed, so that building the parser imports neither)."""
    from ganforge.data import DATASETS
    from ganforge.models import MODELS

    r = run("train", "--help", env_extra={"COLUMNS": "400"})  # one option per line: names are not split
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    model_help = next(line for line in lines if line.lstrip().startswith("--model"))
    data_help = next(line for line in lines if line.lstrip().startswith("--data "))
    assert [m for m in MODELS if m not in model_help.replace(",", " ").replace(";", " ").split()] == []
    assert [d for d in DATASETS if d not in data_help.replace(",", " ").split()] == []


def test_choices_and_lists_come_from_the_config_types_and_registries():
    import typing

    from ganforge.cli import build_parser
    from ganforge.config import TrainConfig
    from ganforge.metrics.evaluate import METRICS, default_metrics
    from ganforge.metrics.features import DOMAIN_EXTRACTORS

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a for a in train._actions}
    hints = typing.get_type_hints(TrainConfig)
    assert tuple(options["device"].choices) == typing.get_args(hints["device"])
    assert tuple(options["precision"].choices) == typing.get_args(hints["precision"])
    for command, defaults in (("eval", default_metrics()), ("compare", default_metrics(conditional=True))):
        text = parser._subparsers._group_actions[0].choices[command].format_help().replace("\n", " ")
        text = " ".join(text.split())
        assert f"from {','.join(METRICS)} (default {','.join(defaults)})" in text, text
        assert all(name in text for name in DOMAIN_EXTRACTORS)
    assert "cas" in default_metrics(conditional=True) and "cas" not in default_metrics()


def test_quick_start_uses_the_fast_preset_only_without_data_model_or_preset(offline_env):
    """`ganforge train` alone is the quick start (preset mnist-fast: class-conditional, lr 2e-3);
    naming a dataset, a model or a preset gives the plain defaults or that preset."""
    from ganforge.cli import QUICK_START, quick_start_preset

    assert quick_start_preset({}) == QUICK_START == "mnist-fast"
    assert quick_start_preset({"data": {"name": "auto"}, "train": {"steps": 10}}) == QUICK_START
    assert quick_start_preset({"data": {"name": "mnist-5k"}}) is None
    assert quick_start_preset({"model": {"name": "dcgan28"}}) is None
    assert quick_start_preset({"data": {"resolution": 32}}) is None  # auto picks dcgan32 then
    assert quick_start_preset({"loss": {"name": "elbo"}}) is None  # a VAE, not the preset's GAN
    assert quick_start_preset({"loss": {"name": "hinge"}}) == QUICK_START
    assert quick_start_preset({"data": "mnist"}) is None  # malformed: left to validation's message
    r = run("train", "--dry-run", "--no-progress", env_extra=offline_env)
    assert r.returncode == 0, r.stderr
    assert "quick start: preset mnist-fast" in r.stderr
    cfg = yaml.safe_load(r.stdout.split("\n", 1)[1])
    assert cfg["preset"] == "mnist-fast" and cfg["model"]["conditional"] and cfg["optim"]["g_lr"] == 2e-3
    r = run("train", "--dry-run", "--no-progress", "--data", "mnist-5k", env_extra=offline_env)
    cfg = yaml.safe_load(r.stdout.split("\n", 1)[1])
    assert r.returncode == 0 and "quick start" not in r.stderr and not cfg["model"]["conditional"]


@pytest.mark.parametrize(
    "argv, code",
    [(["--help"], 0), (["--version"], 0), (["presets"], 0), (["presets", "mnist-fast"], 0), (["train", "--bogus"], 2),
     (["sample"], 2)],
    ids=["help", "version", "presets", "presets-name", "unknown-option", "missing-argument"],
)
def test_help_version_presets_and_argument_errors_do_not_import_torch(argv, code):
    # importing torch costs seconds (more on a busy machine): these answer without it
    probe = (
        "import sys\nfrom ganforge.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[-2:] == ["False", str(code)], out.stdout + out.stderr


def test_presets_one_sentence_each_and_one_in_full(capsys):
    from ganforge.cli import main
    from ganforge.config import list_presets, preset_description

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, about in list_presets().items():
        assert any(line.split() == [name, *about.split()] for line in lines), name  # the whole sentence
    assert "`ganforge presets NAME`" in lines[-1]

    assert main(["presets", "seed-mnist"]) == 0
    out = capsys.readouterr().out
    assert " ".join(out.split()).startswith(f"seed-mnist: {preset_description('seed-mnist').split(chr(10))[0]}")
    flat = " ".join(out.split())  # the paragraphs are wrapped to the terminal
    assert "docs/seed.md" in flat and "kept to reproduce the original" in flat  # the last comment line too
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["optim.g_lr"] == ["0.0001", "default", "0.0002"]
    assert rows["train.update"] == ["simultaneous", "default", "alternating"]
    assert rows["train.epochs"] == ["50", "default", "null"]
    assert rows["data.name"] == ["auto", "(the", "default", "too)"]
    assert "ganforge train --preset seed-mnist" in out

    assert main(["presets", "seed-mnsit"]) == 2
    assert "unknown preset 'seed-mnsit'" in capsys.readouterr().err


def test_train_help_comes_from_the_defaults_and_the_run_name_format(tmp_path):
    """The cadences in `train --help` are the config's defaults (and the quick start preset's), its
    paragraphs are wrapped, and its example run folders are named as a run names them."""
    import re

    from ganforge.cli import QUICK_START, WIDTH, build_parser
    from ganforge.config import TrainConfig, build_config, load_preset
    from ganforge.runlog import new_run_dir

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text, t = train.description, TrainConfig()
    assert max(map(len, text.splitlines())) <= WIDTH
    flat = " ".join(text.split())
    assert f"train.log_every steps ({t.log_every})" in flat
    assert f"train.checkpoint_every steps ({t.checkpoint_every})" in flat
    assert f"train.keep_checkpoints ({t.keep_checkpoints}) newest" in flat
    assert f"train.sample_every steps ({load_preset(QUICK_START)['train']['sample_every']} in the quick start)" in flat
    assert t.sample_every is None and "else one at the end of every epoch" in flat

    made = new_run_dir(build_config(overrides={"data": {"name": "mnist"}, "model": {"name": "dcgan28-classic"},
                                               "run": {"runs_dir": str(tmp_path)}})).name  # fmt: skip
    stamp = re.compile(r"\d{8}-\d{6}$")  # YYYYMMDD-HHMMSS
    assert stamp.sub("T", made) == "mnist-dcgan28-classic-T", made
    shown = re.findall(r"runs/(\S+)", train.epilog + parser.epilog)
    assert shown and {stamp.sub("T", name) for name in shown if stamp.search(name)} == {stamp.sub("T", made)}
    for command in ("eval", "serve"):  # the other commands' examples name runs the same way
        epilog = parser._subparsers._group_actions[0].choices[command].epilog
        assert f"runs/{made[:-15]}20261207-101500" in epilog, command


def test_offline_dry_run_and_data_say_one_line_and_make_no_folder(isolated_env, monkeypatch, capsys):
    import ganforge.data as gd
    from ganforge.cli import main

    monkeypatch.setattr(gd, "_reachable", lambda url: False)  # offline, whatever this machine is
    assert main(["train", "--dry-run", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("using the embedded mnist-5k") == 1 and "downloading" not in err, err
    assert main(["data", "mnist", "--out", str(isolated_env / "m.png")]) == 1
    err = capsys.readouterr().err
    assert "ganforge data mnist-5k" in err and "downloading" not in err
    assert not (gd.cache_dir() / "mnist").exists()
