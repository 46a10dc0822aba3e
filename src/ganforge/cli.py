"""The `ganforge` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

WIDTH = 100  # the help texts' hand-wrapped paragraphs


def _example_run(dataset: str = "mnist", model: Optional[str] = None) -> str:
    """A run folder as a run names it (config.run_name: DATA-MODEL-YYYYMMDD-HHMMSS); by default the quick
    start's on full MNIST."""
    import datetime

    from ganforge.config import RunConfig, load_preset, run_name

    model = model or load_preset(QUICK_START)["model"]["name"]
    return f"{RunConfig().runs_dir}/{run_name(dataset, model, datetime.datetime(2026, 12, 7, 10, 15, 0))}"


def _examples() -> str:
    run = _example_run()
    return f"""examples:
  ganforge train                                   the quick start: digits on MNIST (offline: the
                                                   embedded mnist-5k), preset {QUICK_START}
  ganforge presets {QUICK_START:<32}what a preset is for and what it sets
  ganforge train --preset seed-cifar --data cifar10 --data-root ~/data/cifar10
  ganforge train --data folder:~/pictures/cats --resolution 64 --epochs 20
  ganforge train --set train.batch_size=128 optim.g_lr=1e-4 --dry-run
  ganforge train --resume {run}
  ganforge sample {run} --n 64 --out grid.png
  ganforge data mnist --out mnist.png
  ganforge serve runs/mnist-a runs/mnist-b        generate in the browser; real-or-fake studies
"""


def _hanging(items: list[tuple[str, str]], indent: int = 2) -> str:
    """`name   text` rows, the text wrapped to WIDTH under itself."""
    import textwrap

    col = indent + max(len(name) for name, _ in items) + 2
    return "\n".join(textwrap.fill(text, WIDTH, initial_indent=f"{' ' * indent}{name:<{col - indent}}",
                                    subsequent_indent=" " * col, break_on_hyphens=False)
                      for name, text in items)  # fmt: skip


def _train_description() -> str:
    """`train --help`'s text, from the defaults the run itself uses (config.TrainConfig, RunConfig)."""
    import textwrap

    from ganforge.config import RunConfig, TrainConfig, load_preset

    t, r = TrainConfig(), RunConfig()
    grids = f"every {t.sample_every} steps" if t.sample_every else "at the end of every epoch"
    quick_every = load_preset(QUICK_START)["train"].get("sample_every", t.sample_every)

    def fill(text: str) -> str:
        return textwrap.fill(text, WIDTH, break_on_hyphens=False)

    files = _hanging([
        ("config.yaml", "the resolved config (`--dry-run` prints it and trains nothing)"),
        ("metrics.jsonl", f"losses and rates every train.log_every steps ({t.log_every}), and every event"),
        ("samples.png", "the newest grid of the same fixed latents"),
        ("samples/", f"every grid, as step_NNNNNNN.png: one every train.sample_every steps "
                     f"({quick_every} in the quick start), else one {grids}"),
        ("losses.png", "the loss curves"),
        ("checkpoints/", f"last.pt (every train.checkpoint_every steps ({t.checkpoint_every}) and at each "
                         "epoch's end), final.pt (at the end), step_NNNNNNN.pt (the train.keep_checkpoints "
                         f"({t.keep_checkpoints}) newest), healthy.pt (the last state that passed the health "
                         "check: the rollback target) and best.pt (best FID, with --eval-every)"),
    ])  # fmt: skip
    return "\n\n".join([
        fill(f"Train a GAN (or the VAE baseline, or an image-to-image model). `ganforge train` alone is the "
             f"quick start: preset {QUICK_START}, digits on MNIST."),
        fill(f"A run writes everything into {r.runs_dir}/DATA-MODEL-YYYYMMDD-HHMMSS/ (--runs-dir, --name):"),
        files,
        fill("Ctrl-C finishes the step, saves a checkpoint and prints the command that resumes: --resume "
             "RUN_DIR continues exactly where the run stopped (--from picks another checkpoint)."),
    ])  # fmt: skip


class _Lazy(str):
    """A help text made only when `--help` prints it, for the lists that registries hold (models,
    datasets, metrics, extractors): their modules import torch and torch-fidelity, which building the
    parser for every command would otherwise pay for."""

    def __new__(cls, make: Any) -> _Lazy:
        text = super().__new__(cls, "(computed when printed)")
        text.make = make
        return text

    def __mod__(self, params: Any) -> str:  # argparse expands a help text with `help % params`
        return self.make() % params


def _config_choices(section: str, key: str) -> tuple[str, ...]:
    """The values a `Literal[...]` config field accepts, for the CLI option that sets it."""
    import typing

    from ganforge.config import Config

    section_type = typing.get_type_hints(Config)[section]
    return typing.get_args(typing.get_type_hints(section_type)[key])


def _dataset_help() -> str:
    from ganforge.data import DATASETS

    names = [f"{n} (2D points)" if spec.resolution == 0 else n for n, spec in DATASETS.items()]
    return f"{', '.join(names)}, folder:PATH or a folder path"


def _model_help() -> str:
    from ganforge.models import MODELS

    def of(keep: Any) -> str:
        return ", ".join(name for name, spec in MODELS.items() if keep(spec))

    return (f"architecture: auto (picked for the data), {of(lambda s: s.family == 'gan' and s.resolution)}; "
            f"for 2D points {of(lambda s: not s.resolution)}; the VAE baseline (with loss.name=elbo) "
            f"{of(lambda s: s.family == 'vae')}; translation: paired {of(lambda s: s.family == 'translation')}, "
            f"unpaired {of(lambda s: s.family == 'cyclegan')}")  # fmt: skip


def _metrics_help(defaults: str) -> str:
    from ganforge.metrics.evaluate import METRICS, default_metrics

    chosen = ",".join(default_metrics(conditional=defaults == "compare"))
    return (f"comma-separated from {','.join(METRICS)} (default {chosen}); cas = Classification Accuracy "
            "Score, for class-conditional generators")  # fmt: skip


def _extractor_help() -> str:
    from ganforge.metrics.features import DOMAIN_EXTRACTORS

    return f"auto (the run's domain extractor, else inception), {', '.join(DOMAIN_EXTRACTORS)}, inception"


def _train_parser(sub: Any) -> None:
    from ganforge.config import RunConfig, TrainConfig, load_preset

    p = sub.add_parser(
        "train",
        help="train a GAN (default: DCGAN on MNIST digits)",
        description=_train_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(),
    )
    p.add_argument("--preset", help="start from a preset (see `ganforge presets`)")
    p.add_argument("--config", metavar="FILE",
                   help="start from a config file: a run's config.yaml (the same run again, in a new folder) or "
                   "your own YAML of config sections; --preset, --set and the options override it")  # fmt: skip
    p.add_argument("--data", help=_Lazy(lambda: "dataset: auto, " + _dataset_help()))
    p.add_argument("--data-root", metavar="DIR", help="folder searched first for the dataset files")
    p.add_argument(
        "--resolution", type=int, help="resize + centre-crop images to R x R (must match the model)"
    )
    p.add_argument(
        "--channels",
        type=int,
        help="convert images to 1 (gray) or 3 (RGB) channels",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail on unreadable images instead of skipping them",
    )
    p.add_argument("--model", help=_Lazy(_model_help))
    p.add_argument("--epochs", type=int, help="length in passes over the dataset")
    p.add_argument(
        "--steps",
        type=int,
        help=f"length in optimisation steps (the quick start: {load_preset(QUICK_START)['train']['steps']}; other "
        f"runs: the preset's, else {TrainConfig().steps}; replaces a preset's epochs)",
    )
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--seed", type=int, help="random seed (same seed, same run on CPU)")
    p.add_argument(
        "--device",
        choices=_config_choices("train", "device"),
        help="where to train (auto: cuda, mps, cpu)",
    )
    p.add_argument(
        "--precision",
        choices=_config_choices("train", "precision"),
        help="forward-pass arithmetic: auto (default: bf16 on CPUs that have it; on GPUs fp32 with TF32 "
        "tensor cores from Ampere on, fp16 on Volta/Turing; else fp32), fp32, bf16 autocast, fp16 with loss "
        "scaling (GPUs only)",
    )
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile G and D for training (compile time at start; see docs/benchmarks.md)")
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="every N steps log the domain FID (train.eval_n samples) and keep checkpoints/best.pt",
    )
    p.add_argument("--name", help="run name (default: DATA-MODEL-YYYYMMDD-HHMMSS, e.g. "
                   f"{_example_run().split('/')[-1]})")
    p.add_argument("--runs-dir", help=f"folder for runs (default: {RunConfig().runs_dir})")
    p.add_argument(
        "--set",
        dest="sets",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set train.batch_size=128 loss.name=minimax",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--from", dest="resume_from", metavar="CKPT",
                   help="with --resume: continue from this checkpoint of the run (e.g. healthy.pt) instead of "
                        "last.pt")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N processes on this machine (torchrun --standalone "
                        "--nproc-per-node N; one GPU each with --device cuda, else CPU processes with gloo): "
                        "--batch-size is the global batch, split evenly; only process 0 writes")  # fmt: skip


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """`--nproc N`: run this same command under torchrun, N processes."""
    import os

    if args.nproc < 1:
        print(f"ganforge: error: --nproc must be at least 1, got {args.nproc}.", file=sys.stderr)
        return 2
    rest, skip = [], False
    for a in argv:  # the command again, without --nproc
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "ganforge", *rest]  # fmt: skip
    env = dict(os.environ)
    if args.device in (None, "cpu", "auto") and "OMP_NUM_THREADS" not in env:
        # CPU processes share the cores: give each its share instead of letting all of them take all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.nproc))
    print(f"ganforge: starting {args.nproc} processes: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    # this process becomes torchrun: Ctrl-C and SIGTERM reach its agent, which stops the workers with
    # SIGTERM (each saves a checkpoint), and its exit status is the command's
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ganforge.config import parse_overrides

    values: dict[str, Any] = parse_overrides(args.sets)

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            values.setdefault(section, {})[key] = value

    data = args.data
    if data is not None and not data.startswith("folder:"):
        from ganforge.data import DATASETS

        if data not in DATASETS and data != "auto" and Path(data).expanduser().is_dir():
            data = f"folder:{data}"
    put("data", "name", data)
    put("data", "root", args.data_root)
    put("data", "resolution", args.resolution)
    put("data", "channels", args.channels)
    put("data", "strict", args.strict)
    put("model", "name", args.model)
    put("train", "epochs", args.epochs)
    put("train", "steps", args.steps)
    if args.steps is not None:  # --steps wins over a preset's epochs
        values.setdefault("train", {})["epochs"] = None
    put("train", "batch_size", args.batch_size)
    put("train", "seed", args.seed)
    put("train", "eval_every", args.eval_every)
    put("train", "device", args.device)
    put("train", "precision", args.precision)
    put("train", "compile", args.compile)
    put("run", "name", args.name)
    put("run", "runs_dir", args.runs_dir)
    return values


QUICK_START = "mnist-fast"


def quick_start_preset(overrides: dict[str, Any]) -> Optional[str]:
    """`ganforge train` that names no preset, dataset (other than auto), model, resolution or VAE
    loss: the quick start, the fastest measured route to good digits (docs/benchmarks.md, time to
    good digits). Anything that preset would contradict leaves the plain defaults in charge."""
    data, model, loss = (overrides.get(k, {}) for k in ("data", "model", "loss"))
    if not all(isinstance(section, dict) for section in (data, model, loss)):
        return None  # e.g. --set data=mnist: validation explains it
    plain = data.get("name") not in (None, "auto") or "resolution" in data or "name" in model or loss.get("name") == "elbo"
    return None if plain else QUICK_START


def cmd_train(args: argparse.Namespace, argv: Optional[list[str]] = None) -> int:
    import os

    from ganforge.config import build_config
    from ganforge.train import prepare, train

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ and not args.dry_run:
        return _launch(args, list(argv if argv is not None else sys.argv[1:]))
    overrides = _train_overrides(args)
    if args.resume:
        if args.preset or args.config:
            print(f"ganforge: error: {'--preset' if args.preset else '--config'} cannot be combined with --resume "
                  "(the run keeps its config; --set changes what may change).", file=sys.stderr)  # fmt: skip
            return 2
        train(resume=args.resume, overrides=overrides, progress=not args.no_progress,
              resume_from=args.resume_from)  # fmt: skip
        return 0
    base = None
    if args.config:
        from ganforge.config import load_config_file

        base = load_config_file(args.config)
    preset = args.preset or (None if base is not None else quick_start_preset(overrides))
    if preset and not args.preset and os.environ.get("RANK", "0") == "0":  # once, not per process
        print(f"ganforge: quick start: preset {preset} (digits; `ganforge presets` lists the others)", file=sys.stderr)
    cfg = build_config(preset, overrides, base=base)
    from ganforge.precision import pick_device

    pick_device(cfg.train.device)  # an unavailable device fails before any data is loaded or folder made
    if args.dry_run:
        resolved, ds = prepare(cfg)
        print(
            f"# resolved config ({ds.name}: {len(ds)} images {tuple(ds.images.shape[1:])} from {ds.source})"
        )
        print(resolved.to_yaml(), end="")
        return 0
    train(cfg, progress=not args.no_progress)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ganforge.config import MAX_SEED
    from ganforge.sample import load, write_samples

    if args.n < 1:
        print(f"ganforge: error: --n must be at least 1, got {args.n}.", file=sys.stderr)
        return 2
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        print(f"ganforge: error: --seed must be a whole number from 0 to {MAX_SEED}, got {args.seed}.", file=sys.stderr)
        return 2
    gen = load(args.path, device=args.device)
    classes = None
    if args.cls is not None:
        try:
            classes = [int(c) for c in args.cls.split(",")]
        except ValueError:
            print(f"ganforge: error: --class takes a class number or a comma-separated list (e.g. 7 or 0,1,2), "
                  f"got '{args.cls}'.", file=sys.stderr)  # fmt: skip
            return 2
        try:
            gen.labels(1, classes)  # validates range and conditionality
        except ValueError as e:
            print(f"ganforge: error: --class: {e}", file=sys.stderr)
            return 2
    if args.truncation is not None and not args.truncation > 0:
        print(f"ganforge: error: --truncation must be a positive threshold (e.g. 1.0), got {args.truncation}.",
              file=sys.stderr)  # fmt: skip
        return 2
    if gen.translation:
        try:
            gen.channels_of(args.direction)
        except ValueError as e:
            print(f"ganforge: error: --{e}", file=sys.stderr)
            return 2
    written = write_samples(
        gen, args.n, args.out, seed=args.seed, individual=args.individual, nrow=args.nrow,
        classes=classes, truncation=args.truncation, direction=args.direction,
    )  # fmt: skip
    print(
        f"ganforge: wrote {args.out}"
        + (f" and {args.n} images in {args.individual}" if args.individual else "")
        + f" from {gen.path}"
    )
    return 0 if written else 1


def cmd_translate(args: argparse.Namespace) -> int:
    from ganforge.sample import load, translate_files

    gen = load(args.path, device=args.device)
    if not gen.translation:
        print(f"ganforge: error: {gen.path} is a {gen.config['model']['name']} generator, not a translation model; "
              "`ganforge sample` makes its images.", file=sys.stderr)  # fmt: skip
        return 2
    try:
        done = translate_files(gen, args.inputs, args.out, args.direction)
    except ValueError as e:  # an input that is not a readable image, or a direction the model lacks: say which
        print(f"ganforge: error: {e}", file=sys.stderr)
        return 1
    for source, target, fitted in done:
        print(f"ganforge: {source} -> {target}" + (f" ({fitted})" if fitted else ""))
    print(f"ganforge: translated {len(done)} image(s) with {gen.path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ganforge.sample import export_onnx, export_safetensors, load

    out = Path(args.out) if args.out else None
    if out is None:
        base = Path(args.path)
        base = base if base.is_dir() else base.parent.parent if base.parent.name == "checkpoints" else base.parent
        out = base / f"generator.{args.format}"
    if args.format == "onnx":
        try:
            export_onnx(args.path, out, direction=args.direction)
        except ImportError as e:
            print(f"ganforge: error: {e}", file=sys.stderr)
            return 2
        except (RuntimeError, ValueError, TypeError) as e:  # the exporter's own failures
            print(f"ganforge: error: ONNX export of {args.path} failed ({type(e).__name__}: {e}); "
                  "--format safetensors always works.", file=sys.stderr)  # fmt: skip
            return 1
        gen = load(args.path)
        if gen.translation:
            inputs = f"x [N, {gen.channels_of(args.direction)[0]}, {gen.resolution}, {gen.resolution}] float32 in [-1, 1]"
        else:
            inputs = "z [N, z_dim] float32" + (", c [N] int64" if gen.num_classes else "")
        print(f"ganforge: wrote {out} ({out.stat().st_size / 1e6:.2f} MB; inputs {inputs}; output images "
              "[N, C, H, W] in [-1, 1]; run it with onnxruntime.InferenceSession)")  # fmt: skip
        return 0
    export_safetensors(args.path, out)
    gen = load(out)  # read it back: the export is only done when it loads
    print(f"ganforge: wrote {out} ({out.stat().st_size / 1e6:.2f} MB; {gen.config['model']['name']}, "
          f"load it with ganforge.load('{out}'))")  # fmt: skip
    return 0


def _yaml_value(value: Any) -> str:
    """A config value as `--set` takes it (and config.yaml shows it): true, null, 0.0002."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_presets(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from ganforge.config import list_presets, preset_changes, preset_description

    if args.name is None:
        presets = list_presets()
        width = max(map(len, presets))
        for name, about in presets.items():
            print(f"{name:<{width}}  {about}")
        print("\n`ganforge presets NAME` prints a preset's whole description and the values it sets.")
        return 0
    about, changes = preset_description(args.name), preset_changes(args.name)  # an unknown name: ConfigError
    columns = min(shutil.get_terminal_size().columns, 100)
    for i, paragraph in enumerate(about.split("\n\n")):
        print(textwrap.fill(f"{args.name}: {paragraph}" if i == 0 else paragraph, columns,
                            break_on_hyphens=False, break_long_words=False) + "\n")  # fmt: skip
    print("It sets, over the defaults (`--set KEY=VALUE` changes any value):")
    width = max(len(key) for key, _, _ in changes)
    shown = [_yaml_value(value) for _, value, _ in changes]
    value_width = max(map(len, shown))
    for (key, value, default), text in zip(changes, shown):
        note = "(the default too)" if value == default else f"default {_yaml_value(default)}"
        print(f"  {key:<{width}}  {text:<{value_width}}  {note}")
    print(f"\nTrain with it: ganforge train --preset {args.name}   (--dry-run prints the whole resolved config)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import torch

    from ganforge.data import load_dataset
    from ganforge.sample import save_grid, save_scatter

    name = args.name
    if not name.startswith("folder:") and Path(name).expanduser().is_dir():
        name = f"folder:{name}"
    ds = load_dataset(
        name,
        root=args.data_root,
        split=args.split,
        resolution=args.resolution,
        download=not args.no_download,
    )
    counts = torch.bincount(ds.labels, minlength=len(ds.class_names)).tolist()
    print(f"dataset   {ds.name} ({args.split} split)")
    print(f"source    {ds.source}")
    if ds.is_points:
        print(f"points    {len(ds)}  dimension {ds.images.shape[1]}  float32")
    else:
        print(f"images    {len(ds)}  shape [C, H, W] = {list(ds.images.shape[1:])}  uint8")
    labels = ", ".join(f"{cls}: {c}" for cls, c in zip(ds.class_names, counts))
    print("labels    " + (labels if len(counts) <= 50 else f"{len(counts)} classes, {min(counts)} to {max(counts)} each"))
    if ds.skipped:
        print(f"skipped   {len(ds.skipped)} unreadable files")
    out = args.out or f"{ds.name.split(':')[0]}-{args.split}.png"
    gen = torch.Generator().manual_seed(0)
    if ds.is_points:
        pick = torch.randperm(len(ds), generator=gen)[:2500]
        save_scatter(ds.images[pick], out, title=f"{ds.name}: {len(pick)} points", label="real")
        print(f"plot      {out} ({len(pick)} random points)")
        return 0
    pick = torch.randperm(len(ds), generator=gen)[: args.n]
    save_grid(ds.images[pick], out)
    print(f"grid      {out} ({len(pick)} random images)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ganforge.metrics.evaluate import evaluate, format_table, parse_metrics

    report = evaluate(
        args.path,
        metrics=parse_metrics(args.metrics),
        n=args.n,
        ref=args.ref,
        n_ref=args.n_ref,
        extractor=args.extractor,
        seed=args.seed,
        inception_weights=args.inception_weights,
        out=args.out,
        device=args.device,
        cas_per_class=args.cas_per_class,
    )
    print(format_table(report))
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from ganforge.metrics.features import DOMAIN_EXTRACTORS, file_sha256, train_domain_classifier

    if args.dataset not in DOMAIN_EXTRACTORS:
        print(
            f"ganforge: error: no domain extractor for '{args.dataset}'; choose one of "
            f"{', '.join(DOMAIN_EXTRACTORS)}.",
            file=sys.stderr,
        )
        return 2
    out, accuracy = train_domain_classifier(
        args.dataset,
        root=args.data_root,
        epochs=args.epochs,
        seed=args.seed,
        out=args.out,
        progress=not args.no_progress,
    )
    size = out.stat().st_size
    print(
        f"extractor {args.dataset}: test accuracy {accuracy:.2%}; weights {out} "
        f"({size / 1e6:.2f} MB, sha256 {file_sha256(out)})"
    )
    return 0


def _sample_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from a trained run or checkpoint",
        description="Generate images with a trained generator and write them as PNG.",
    )
    p.add_argument("path", help="a run folder (uses its newest checkpoint) or a checkpoint file")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--out", default="samples.png", help="grid PNG to write (default samples.png)")
    p.add_argument("--seed", type=int, help="seed for the latents (same seed, same images)")
    p.add_argument(
        "--individual", metavar="DIR", help="also write each image as DIR/000000.png, ..."
    )
    p.add_argument("--nrow", type=int, help="images per grid row (default: square)")
    p.add_argument("--class", dest="cls", metavar="K",
                   help="class-conditional models: make class K, or a comma-separated list of classes "
                        "in turn (default: every class in turn, one per grid column)")  # fmt: skip
    p.add_argument("--truncation", type=float, metavar="T",
                   help="truncation trick (BigGAN): redraw latent entries with |z| > T; smaller T gives more "
                        "typical, less varied images (e.g. 1.0; default off)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device to generate on (default cpu)")
    _add_direction(p)


def _add_direction(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direction", default="a2b", choices=("a2b", "b2a"),
                   help="translation models: a2b (domain A -> B, the default) or, for CycleGAN, b2a")


def _presets_parser(sub: Any) -> None:
    p = sub.add_parser(
        "presets",
        help="list the training presets; `presets NAME` describes one",
        description="List the training presets, one sentence each; with NAME, print that preset's whole "
        "description and every config value it sets, beside the default it replaces.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a preset to describe (e.g. mnist-fast)")


def _data_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="show a dataset: size, shape, label counts, and a grid of real images",
        description="Load a dataset, print its size, shape and label counts, write a grid.",
    )
    p.add_argument("name", help=_Lazy(_dataset_help))
    p.add_argument("--data-root", metavar="DIR", help="folder searched first for the dataset files")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument(
        "--resolution", type=int, help="resize + centre-crop to R x R (folders default to 64)"
    )
    p.add_argument("--out", help="grid PNG to write (default <name>-<split>.png)")
    p.add_argument("--n", type=int, default=64, help="images in the grid (default 64)")
    p.add_argument("--no-download", action="store_true", help="never download")


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a trained generator: FID, KID, IS, precision/recall, modes, memorisation",
        description="Generate N samples, extract features, and compute metrics against a real reference. "
        "Prints a table and writes eval.json (next to the run) in which every number carries its protocol: "
        "sample count, reference dataset/split/size, extractor and its weights hash, library versions. "
        "Works offline with the shipped domain extractors; see docs/metrics.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  ganforge eval {_example_run()}\n"
        "  ganforge eval RUN --metrics fid,kid,memorization --n 5000\n"
        "  ganforge eval RUN --metrics fid,cas   (a class-conditional run)\n"
        "  ganforge eval RUN --extractor inception --inception-weights weights-inception-2015-12-05-6726825d.pth",
    )
    p.add_argument("path", help="a run folder (its newest checkpoint) or a checkpoint file")
    _protocol_args(p, "eval")
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="TF-FID Inception weights for offline use (or set GANFORGE_INCEPTION_WEIGHTS)",
    )
    p.add_argument("--out", help="where to write the JSON report (default RUN/eval.json)")


def _translate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "translate",
        help="translate image files with an image-to-image model (pix2pix): edges -> item, gray -> colour",
        description="Run a trained translation model on image files or folders of them. Each image is "
        "converted to the model's input channels and, when its size differs, resized (shorter side) and "
        "centre-cropped to the model's resolution, which is printed; the output is written as OUT/<name>.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  ganforge translate {_example_run('edges2fashion', 'pix2pix28')} sketch.png --out out/\n"
        "  ganforge translate runs/colorize RUN_PHOTOS_FOLDER/ --out colour/",
    )
    p.add_argument("path", help="a translation run folder (its newest checkpoint) or a checkpoint file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders of them")
    p.add_argument("--out", default="translated", metavar="DIR", help="output folder (default ./translated)")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    _add_direction(p)


def _train_classifier_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="(re)build a domain feature extractor for the metrics",
        description="Train the small classifier that `ganforge eval` uses as the offline feature "
        "extractor for DATASET, save it (float16) and print its test accuracy and SHA-256.",
    )
    p.add_argument("dataset", help="mnist, fashion-mnist or cifar10")
    p.add_argument("--data-root", metavar="DIR", help="folder searched first for the dataset files")
    p.add_argument(
        "--epochs", type=int, help="epochs (default: 4 mnist, 12 fashion-mnist, 10 cifar10)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="where to write the weights (default: ~/.cache/ganforge/extractors/DATASET.pt, or "
                   "under $XDG_CACHE_HOME, used from then on in place of the shipped weights; delete it to go back)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")


def _export_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's generator for sharing (.safetensors: weights + config, no pickle; or ONNX)",
        description="Write the generator of a run (G_ema when kept) as one .safetensors file holding its "
        "weights and, in the metadata, its config. ganforge.load(PATH) and `ganforge sample PATH` read it. "
        "--format onnx writes an ONNX model instead (inputs z, and c for conditional models; output images).",
    )
    p.add_argument("path", help="a run folder (its newest checkpoint) or a checkpoint file")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "onnx"),
                   help="safetensors (default): for ganforge/PyTorch; onnx: for onnxruntime and other "
                   "runtimes (needs the onnx package)")  # fmt: skip
    p.add_argument("--out", help="file to write (default: RUN_DIR/generator.safetensors or .onnx)")
    _add_direction(p)


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs (e.g. a GAN and a VAE) under one evaluation protocol",
        description="Evaluate every run with the same protocol (sample count, reference split, extractor, "
        "seed) and put the metrics, side by side, next to each run's training cost (steps, images seen, "
        "wall time). Writes OUT/compare.md (the table, also printed), OUT/compare.json (every number with "
        "its protocol), OUT/compare.png (a sample grid per run) and one eval.json per run. The best value "
        "of each row is in bold; CAS is reported for class-conditional runs only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ganforge compare runs/mnist-gan runs/mnist-vae\n"
        "  ganforge compare runs/a runs/b runs/c --metrics fid,pr,cas --n 5000 --out results/abc",
    )
    p.add_argument("paths", nargs="+", metavar="RUN", help="run folders or checkpoint files (two or more)")
    _protocol_args(p, "compare")
    p.add_argument("--out", default="compare", metavar="DIR", help="output folder (default ./compare)")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web app: generate images in the browser, run real-or-fake studies with people",
        description="Start a web app for trained runs. The Generate page makes grids (seed, class, truncation, "
        "checkpoint) and interpolations between two seeds, with PNG download. The Studies page runs a "
        "real-or-fake study (HYPE-infinity, Zhou et al. 2019): raters open a link, see labelled examples, "
        "then judge a shuffled mix of real held-out and generated images one at a time (keys R/F); the "
        "results page gives each run's human error rate with a 95% bootstrap CI. Votes go to a SQLite "
        "file (--db). Everything is served by the app itself: it works offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  ganforge serve {_example_run()}\n"
        "  ganforge serve runs/a runs/b --port 8080 --db studies.db\n"
        "  ganforge serve runs/a --host 0.0.0.0   (other machines can reach it: raters on your network)",
    )
    p.add_argument("paths", nargs="+", metavar="RUN", help="run folders or checkpoint/.safetensors files")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--db", default="ganforge-studies.db", metavar="PATH",
                   help="SQLite file for studies and votes (default ./ganforge-studies.db)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device to generate on (default cpu)")
    p.add_argument("--admin-key", metavar="KEY",
                   help="the key that listing and creating studies need (default: a new random one at each start; "
                   "the Studies link printed at start carries it); 16 to 128 characters of A-Z a-z 0-9 _ -")  # fmt: skip
    p.add_argument("--max-studies", type=int, default=50, metavar="N",
                   help="the most studies the database may hold; creating one more is refused (default 50)")  # fmt: skip


def _study_parser(sub: Any) -> None:
    p = sub.add_parser(
        "study",
        help="real-or-fake study results from the command line (studies are run with `ganforge serve`)",
        description="Read the studies of a `ganforge serve` database: list them, or print one study's "
        "HYPE-infinity results (per run: human error rate, 95% bootstrap CI, false-real and false-fake rates).",
    )
    study_sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    study_sub.required = True
    q = study_sub.add_parser("list", help="list the studies with their rater and results links")
    q.add_argument("--db", default="ganforge-studies.db", metavar="PATH", help="the serve database")
    q = study_sub.add_parser("results", help="print a study's results; --csv writes every vote")
    q.add_argument("id", help="the study id (from `ganforge study list` or its rater link /rate/ID)")
    q.add_argument("--db", default="ganforge-studies.db", metavar="PATH", help="the serve database")
    q.add_argument("--csv", metavar="PATH", help="also write every vote as CSV")
    q.add_argument("--json", action="store_true", help="print the full JSON report instead of the table")


def build_parser() -> argparse.ArgumentParser:
    from ganforge import __version__

    parser = argparse.ArgumentParser(
        prog="ganforge",
        description="Train GANs on image data, keep training stable, measure quality and diversity.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(),
    )
    parser.add_argument("--version", action="version", version=f"ganforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _train_parser(sub)
    _sample_parser(sub)
    _presets_parser(sub)
    _data_parser(sub)
    _eval_parser(sub)
    _translate_parser(sub)
    _train_classifier_parser(sub)
    _export_parser(sub)
    _compare_parser(sub)
    _serve_parser(sub)
    _study_parser(sub)
    return parser


def _protocol_args(p: argparse.ArgumentParser, command: str) -> None:
    """The evaluation protocol's options, shared by `eval` and `compare` (the command picks the default
    metrics: compare adds those for class-conditional runs, n/a for the others)."""
    p.add_argument("--metrics", help=_Lazy(lambda: _metrics_help(command)))
    if command == "eval":
        p.add_argument("--n", type=int, help="generated samples (default 10,000; PacGAN's counts for its benchmarks: "
                                             "2,500 for ring8/grid25, 26,000 for stacked-mnist)")  # fmt: skip
    else:
        p.add_argument("--n", type=int, default=10000, help="generated samples per run (default 10,000)")
    p.add_argument("--ref", metavar="DATASET:SPLIT", help="real reference (default: the run's dataset, test split)")
    p.add_argument("--n-ref", metavar="N|all", help="reference images, the split's first (default: as many as "
                   "generated; 'all': the whole split, e.g. --ref cifar10:train --n-ref all for CIFAR-10's 50k)")  # fmt: skip
    p.add_argument(
        "--extractor",
        default="auto",
        help=_Lazy(_extractor_help),
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluated latents (default 0)")
    p.add_argument("--cas-per-class", type=int, default=1000, metavar="N",
                   help="CAS: generated (and real) training images per class (default 1,000)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device to generate on (default cpu)")


def cmd_compare(args: argparse.Namespace) -> int:
    from ganforge.metrics.compare import compare
    from ganforge.metrics.evaluate import parse_metrics

    report = compare(
        args.paths,
        metrics=parse_metrics(args.metrics) if args.metrics else None,
        n=args.n,
        ref=args.ref,
        n_ref=args.n_ref,
        extractor=args.extractor,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
        cas_per_class=args.cas_per_class,
    )
    from ganforge.metrics.compare import format_terminal

    print(format_terminal(report["table"]))
    print(f"\nwritten: {args.out}/compare.md (this table in Markdown), compare.json, compare.png  "
          f"({report['seconds']:.1f} s)")  # fmt: skip
    return 0


def _need_serve_packages() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"ganforge: error: `ganforge serve` needs {' and '.join(missing)}: pip install 'ganforge[serve]'")


def cmd_serve(args: argparse.Namespace) -> int:
    _need_serve_packages()
    import uvicorn

    from ganforge.serve.app import (
        ServeError,
        check_port,
        create_app,
        is_loopback,
        open_runs,
        studies_url,
    )
    from ganforge.serve.store import StudyError, StudyStore

    try:
        check_port(args.host, args.port)  # before anything is printed: a port in use is the first thing said
        runs = open_runs(args.paths, device=args.device)
        store = StudyStore(args.db)
        app = create_app(runs, store, device=args.device, admin_key=args.admin_key, max_studies=args.max_studies)
    except (ServeError, StudyError) as e:
        print(f"ganforge: error: {e}", file=sys.stderr)
        return 1
    if not is_loopback(args.host):
        print(f"ganforge: warning: binding {args.host}: anyone who can reach this machine on port {args.port} "
              "can generate images and join studies (there are no accounts; results need the study key).",
              file=sys.stderr)  # fmt: skip
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    for r in runs:
        print(f"ganforge: run {r.key}: {r.name} ({r.default}, {len(r.checkpoints)} checkpoints)")
    print(f"ganforge: studies and votes in {store.path}")
    print(f"ganforge: open http://{shown}:{args.port}/  (Ctrl-C stops)")
    print("ganforge: studies (this link holds the admin key that lists and creates studies: keep it to yourself): "
          f"{studies_url(app, f'http://{shown}:{args.port}')}")  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ganforge.metrics.hype import format_results
    from ganforge.serve.store import StudyError, StudyStore

    if not Path(args.db).is_file():
        print(f"ganforge: error: no study database at '{args.db}'; pass the file `ganforge serve --db` used.",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        store = StudyStore(args.db)
        if args.study_command == "list":
            studies = store.studies()
            for s in studies:
                key = store.admin_key(s["id"])
                print(f"{s['id']}  {s['name']}  runs: {', '.join(s['runs'])}  raters: {s['raters']}  votes: {s['votes']}")
                print(f"    rate: /rate/{s['id']}   results: /results/{s['id']}?key={key}")
            if not studies:
                print("no studies yet: create one on the Studies page of `ganforge serve`.")
            return 0
        report = store.results(args.id)
        if args.csv:
            from ganforge.checkpoint import atomic_write_bytes

            atomic_write_bytes(Path(args.csv), store.votes_csv(args.id).encode())
        import json

        print(json.dumps(report, indent=2) if args.json else format_results(report))
        if args.csv:
            print(f"ganforge: wrote {report['votes']} votes to {args.csv}")
    except StudyError as e:
        print(f"ganforge: error: {e}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "export": cmd_export,
    "presets": cmd_presets,
    "data": cmd_data,
    "train-classifier": cmd_train_classifier,
    "eval": cmd_eval,
    "translate": cmd_translate,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "study": cmd_study,
}


def main(argv: Optional[list[str]] = None) -> int:
    # parse before importing the library: --help, --version, presets and argument errors answer
    # without torch (a command imports what it needs)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        return COMMANDS[args.command](args)
    except BaseException as e:
        code = _reported(e)
        if code is None:
            raise
        return code


def _reported(e: BaseException) -> Optional[int]:
    """Print a library error as one line and return the exit status, or None for a real bug. Only
    modules already imported are asked: an error class of a module the command never loaded cannot
    be the one raised."""

    def of(module: str, *names: str) -> tuple[type, ...]:
        loaded = sys.modules.get(module)
        return tuple(getattr(loaded, n) for n in names) if loaded else ()

    if isinstance(e, of("ganforge.config", "ConfigError")):
        print(f"ganforge: config error: {e}", file=sys.stderr)
        return 2
    if isinstance(e, of("ganforge.metrics.evaluate", "EvalError")):
        print(f"ganforge: error: {e}", file=sys.stderr)
        return 2
    library = (*of("ganforge.data", "DatasetError"), *of("ganforge.checkpoint", "CheckpointError"),
               *of("ganforge.metrics.features", "ExtractorError"))  # fmt: skip
    if isinstance(e, library):
        print(f"ganforge: error: {e}", file=sys.stderr)
        return 1
    if isinstance(e, of("ganforge.train", "TrainingStopped")):
        print(f"ganforge: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, KeyboardInterrupt) or (isinstance(e, Exception) and _caused_by_interrupt(e)):
        # a second Ctrl-C inside a library (e.g. an import) may arrive wrapped
        print("ganforge: aborted.", file=sys.stderr)
        return 130
    return None


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
