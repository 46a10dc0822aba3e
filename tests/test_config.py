import pytest

from ganforge.config import (
    Config,
    ConfigError,
    build_config,
    from_dict,
    list_presets,
    load_preset,
    parse_overrides,
    preset_changes,
    preset_description,
    resolve,
)


def test_defaults_validate_and_round_trip_through_yaml():
    import yaml

    cfg = Config()
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_overrides_are_typed():
    values = parse_overrides(
        [
            "train.batch_size=32",
            "optim.g_lr=2e-4",
            "data.strict=true",
            "run.name=x",
            "train.epochs=null",
        ]
    )
    assert values == {
        "train": {"batch_size": 32, "epochs": None},
        "optim": {"g_lr": 2e-4},
        "data": {"strict": True},
        "run": {"name": "x"},
    }
    cfg = build_config(overrides=values)
    assert cfg.train.batch_size == 32 and cfg.optim.g_lr == 2e-4 and cfg.data.strict is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"train": {"batch_sise": 3}},
            "unknown config key 'train.batch_sise'.*Did you mean 'batch_size'",
        ),
        ({"trian": {}}, "unknown config key 'trian'.*Did you mean 'train'"),
        ({"train": {"batch_size": "big"}}, "train.batch_size: expected int, got str"),
        ({"train": {"batch_size": 1.5}}, "train.batch_size: expected int"),
        ({"optim": {"g_lr": -1e-4}}, "optim.g_lr: must be greater than zero"),
        ({"optim": {"beta1": 1.0}}, r"optim.beta1: must be in \[0, 1\)"),
        ({"train": {"batch_size": 0}}, "train.batch_size: must be greater than zero"),
        ({"train": {"epochs": -2}}, "train.epochs: must be greater than zero"),
        ({"model": {"name": "dcgan23"}}, "unknown model 'dcgan23'.*dcgan28.*Did you mean"),
        ({"loss": {"name": "hinj"}}, "unknown loss 'hinj'"),
        ({"data": {"name": "minst"}}, "unknown dataset 'minst'.*Did you mean 'mnist'"),
        ({"data": {"channels": 2}}, "data.channels: must be 1 or 3"),
        (
            {"train": {"device": "tpu"}},
            "'tpu' is not a valid choice; choose one of auto, cpu, cuda, mps",
        ),
        (
            {"model": {"name": "dcgan28"}, "data": {"resolution": 64}},
            "dcgan28 makes 28x28 images, not 64",
        ),
        ({"data": {"resolution": 48}}, "no model makes 48x48"),
        ({"train": "fast"}, "train: expected a section"),
    ],
)
def test_bad_values_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.batch_size"])


def test_presets_exist_and_are_valid():
    presets = list_presets()
    assert {"seed-mnist", "seed-cifar"} <= set(presets)
    for name in presets:
        assert presets[name], f"preset {name} needs a first-line comment saying what it is for"
        build_config(name)
    cfg = build_config("seed-cifar", {"train": {"batch_size": 32}})
    assert cfg.model.name == "dcgan32" and cfg.optim.beta1 == 0.5 and cfg.train.batch_size == 32
    mnist = load_preset("seed-mnist")
    assert mnist["optim"]["g_lr"] == 1e-4 and mnist["train"]["batch_size"] == 128
    with pytest.raises(ConfigError, match="unknown preset 'seed-mnsit'.*Did you mean 'seed-mnist'"):
        build_config("seed-mnsit")


def test_resolve_fills_model_and_checks_batch_against_dataset():
    cfg = build_config(overrides={"data": {"name": "cifar10"}})
    out = resolve(cfg, "cifar10", channels=3, n_images=1000)
    assert out.model.name == "dcgan32" and out.data.resolution == 32 and out.model.channels == 3
    assert cfg.model.name == "auto"  # the input is untouched
    with pytest.raises(ConfigError, match="batch_size: 64 is larger than the dataset"):
        resolve(cfg, "cifar10", channels=3, n_images=10)


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999])
def test_a_seed_out_of_range_is_a_config_error(seed):
    with pytest.raises(ConfigError, match=f"train.seed: must be a whole number from 0 to 4294967295.*got {seed}"):
        build_config(overrides={"train": {"seed": seed}})
    assert build_config(overrides={"train": {"seed": 2**32 - 1}}).train.seed == 2**32 - 1


def test_a_seed_out_of_range_makes_no_run_folder(tmp_path, isolated_env, capsys):
    from ganforge.cli import main

    runs = tmp_path / "runs"
    argv = ["train", "--data", "mnist-5k", "--steps", "1", "--no-progress", "--runs-dir", str(runs),
            "--seed", "99999999999999999999"]  # fmt: skip
    assert main(argv) == 2
    assert "train.seed: must be a whole number" in capsys.readouterr().err and not runs.exists()


def test_the_largest_seed_trains(tmp_path, isolated_env):
    """Every seed derived from train.seed (data order seed * 1_000_003 + epoch, latents seed + k) fits torch's."""
    from ganforge.train import train

    from .conftest import tiny

    assert train(build_config(overrides=tiny(tmp_path, steps=2, seed=2**32 - 1)), progress=False).is_dir()


def test_each_preset_opens_with_one_short_complete_sentence():
    """`ganforge presets` shows each preset's first comment line: a whole sentence, not a cut one."""
    for name, about in list_presets().items():
        assert about.endswith(".") and len(about) <= 100, f"{name}: {about!r}"
        assert about[0].isupper() or about.split()[0] in ("pix2pix",), f"{name}: {about!r}"
    assert "seed's" not in " ".join(preset_description(n) for n in list_presets())  # jargon (issue #30 item 12)


def test_preset_description_and_changes_are_the_whole_file():
    from ganforge.config import PRESET_DIR

    for name in list_presets():
        text = (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
        about = preset_description(name)
        assert about.split("\n\n")[0] == list_presets()[name]
        assert " ".join(about.split()) == " ".join(" ".join(comments).split())  # every comment line, in order
        cfg, defaults = build_config(name), Config()
        changes = preset_changes(name)
        assert len(changes) == sum(len(section) for section in load_preset(name).values())
        for key, value, default in changes:  # the values a run of the preset really gets
            section, field_name = key.split(".")
            assert getattr(getattr(cfg, section), field_name) == value, key
            assert getattr(getattr(defaults, section), field_name) == default, key
    assert ("optim.g_lr", 1e-4, 2e-4) in preset_changes("seed-mnist")
    with pytest.raises(ConfigError, match="unknown preset 'seed-mnsit'"):
        preset_description("seed-mnsit")
