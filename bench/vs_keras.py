"""ganforge's seed-mnist step vs the TensorFlow/Keras DCGAN tutorial's own train_step, on this CPU.

    python bench/vs_keras.py                     # installs tensorflow-cpu into a venv on first use
    python bench/vs_keras.py --venv /path/to/venv --batch 256 --blocks 5

The peer is the tutorial's code (seed section 4.1): its make_generator_model /
make_discriminator_model and its `@tf.function train_step` (one G forward, D on real and fake, both
tapes' gradients, two Adam 1e-4 updates). TensorFlow lives in its own virtual environment
(default ~/.cache/ganforge/tf-venv, created and filled with tensorflow-cpu on first use; skipped
with a message when that fails, e.g. offline). ganforge's side is the run `ganforge train --preset
seed-mnist` builds (bench/throughput.py's `bench_run`, through train.build_run: dcgan28 at widths 64,
make_adam's Adam 1e-4 with betas (0.9, 0.999), the precision and autocast the given train.precision
resolves to), with --batch and each --updates value as train.batch_size and train.update (the preset's own is
the tutorial's simultaneous update; alternating is ganforge's default, seed section 3.2), timed as train.loop
calls it: `objective.step(run)`. `simultaneous-two-tape` is the simultaneous update without its shared
backward through D; no config switch selects that, so for it the worker hands the objective
`steps.simultaneous_step` with `shared_backward=False` and otherwise runs the same step. The tutorial's step
trains on one fixed batch; ganforge's fetches its real batch from random uint8 images as training does
(`Feed.real_batch`, 0.0-0.3 % of a step in bench/throughput.py). Both run in separate processes with the
same number of threads, the same batch size and random data, alternating in blocks (TF, ganforge, TF, ...)
so that drifts of the machine hit both; medians over blocks.
Writes bench/results/vs_keras.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

TF_WORKER = r'''
import json, sys, time
import tensorflow as tf
batch, iters, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from tensorflow.keras import layers

def make_generator_model():  # the tutorial's, verbatim in structure
    model = tf.keras.Sequential()
    model.add(layers.Dense(7 * 7 * 256, use_bias=False, input_shape=(100,)))
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())
    model.add(layers.Reshape((7, 7, 256)))
    model.add(layers.Conv2DTranspose(128, (5, 5), strides=(1, 1), padding="same", use_bias=False))
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())
    model.add(layers.Conv2DTranspose(64, (5, 5), strides=(2, 2), padding="same", use_bias=False))
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())
    model.add(layers.Conv2DTranspose(1, (5, 5), strides=(2, 2), padding="same", use_bias=False, activation="tanh"))
    return model

def make_discriminator_model():
    model = tf.keras.Sequential()
    model.add(layers.Conv2D(64, (5, 5), strides=(2, 2), padding="same", input_shape=[28, 28, 1]))
    model.add(layers.LeakyReLU())
    model.add(layers.Dropout(0.3))
    model.add(layers.Conv2D(128, (5, 5), strides=(2, 2), padding="same"))
    model.add(layers.LeakyReLU())
    model.add(layers.Dropout(0.3))
    model.add(layers.Flatten())
    model.add(layers.Dense(1))
    return model

generator, discriminator = make_generator_model(), make_discriminator_model()
cross_entropy = tf.keras.losses.BinaryCrossentropy(from_logits=True)
generator_optimizer = tf.keras.optimizers.Adam(1e-4)
discriminator_optimizer = tf.keras.optimizers.Adam(1e-4)

@tf.function
def train_step(images):
    noise = tf.random.normal([batch, 100])
    with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
        generated_images = generator(noise, training=True)
        real_output = discriminator(images, training=True)
        fake_output = discriminator(generated_images, training=True)
        gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
        disc_loss = cross_entropy(tf.ones_like(real_output), real_output) + cross_entropy(tf.zeros_like(fake_output), fake_output)
    gradients_of_generator = gen_tape.gradient(gen_loss, generator.trainable_variables)
    gradients_of_discriminator = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
    generator_optimizer.apply_gradients(zip(gradients_of_generator, generator.trainable_variables))
    discriminator_optimizer.apply_gradients(zip(gradients_of_discriminator, discriminator.trainable_variables))

images = tf.random.uniform([batch, 28, 28, 1], -1.0, 1.0)
for _ in range(3):
    train_step(images)  # trace + warm up
start = time.perf_counter()
for _ in range(iters):
    train_step(images)
float(generator.trainable_variables[0][0, 0])  # wait for the last step
print(json.dumps({"img_per_s": batch * iters / (time.perf_counter() - start), "tf": tf.__version__}))
'''


def ganforge_worker(batch: int, iters: int, threads: int, precision: str, update: str) -> dict:
    import time

    import torch
    from throughput import bench_run, train_step

    from ganforge import build_config

    torch.set_num_threads(threads)
    two_tapes = update == "simultaneous-two-tape"
    cfg = build_config("seed-mnist", {
        "train": {"batch_size": batch, "precision": precision, "device": "cpu",
                  "update": "simultaneous" if two_tapes else update},
        "monitor": {"every": None},
    })  # fmt: skip
    if two_tapes:  # the same objective step, its simultaneous_step without the shared backward
        import functools

        import ganforge.objectives
        from ganforge.steps import simultaneous_step

        ganforge.objectives.simultaneous_step = functools.partial(simultaneous_step, shared_backward=False)
    run, objective = bench_run(cfg, torch.randint(0, 256, (max(batch * 8, 2048), 1, 28, 28), dtype=torch.uint8))

    for _ in range(3):
        train_step(run, objective)
    start = time.perf_counter()
    for _ in range(iters):
        train_step(run, objective)
    return {"img_per_s": batch * iters / (time.perf_counter() - start), "torch": torch.__version__}


def ensure_tf(venv: Path) -> Path | None:
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True).returncode == 0:
        return python
    print(f"vs_keras: installing tensorflow-cpu into {venv} (once) ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu"], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"vs_keras: skipped: TensorFlow could not be installed ({e}).", file=sys.stderr)
        return None
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(Path.home() / ".cache" / "ganforge" / "tf-venv"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--updates", nargs="+", default=["simultaneous", "alternating"],
                        help="ganforge's train.update values to time (also simultaneous-two-tape: "
                             "the simultaneous update without its shared backward through D)")
    parser.add_argument("--out", default="bench/results/vs_keras.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: PRECISION,UPDATE for a ganforge block
    args = parser.parse_args()
    if args.worker:
        precision, update = args.worker.split(",")
        print(json.dumps(ganforge_worker(args.batch, args.iters, args.threads, precision, update)))
        return
    python = ensure_tf(Path(args.venv))
    if python is None:
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    sides = [f"{p},{u}" for p in args.precisions for u in args.updates]
    runs: dict[str, list[float]] = {"keras": [], **{s: [] for s in sides}}
    versions = {}
    for _ in range(args.blocks):
        out = subprocess.run([str(python), "-c", TF_WORKER, str(args.batch), str(args.iters), str(args.threads)],
                             capture_output=True, text=True, env=env, check=True)  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        runs["keras"].append(row["img_per_s"])
        versions["tensorflow"] = row["tf"]
        for side in sides:
            out = subprocess.run([sys.executable, __file__, "--worker", side, "--batch", str(args.batch),
                                  "--iters", str(args.iters), "--threads", str(args.threads)],
                                 capture_output=True, text=True, env=env, check=True)  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[side].append(row["img_per_s"])
            versions["torch"] = row["torch"]
        print(json.dumps({k: round(v[-1], 1) for k, v in runs.items()}), flush=True)
    keras = statistics.median(runs["keras"])
    header = (f"{date.today()}, {platform.processor() or platform.machine()}, {args.threads} threads, batch {args.batch}, "
              f"TensorFlow {versions['tensorflow']}, torch {versions['torch']}; medians of {args.blocks} "
              f"alternating blocks of {args.iters} steps")  # fmt: skip
    lines = ["| step | img/s | vs Keras |", "|---|---|---|", f"| Keras tutorial `train_step` (tf.function, fp32) | {keras:.0f} | 1.00× |"]
    from ganforge.config import load_preset

    preset_update = load_preset("seed-mnist").get("train", {}).get("update", "alternating")
    for side in sides:
        ours = statistics.median(runs[side])
        precision, update = side.split(",")
        which = " (seed-mnist's)" if update == preset_update else " (ganforge's default)" if update == "alternating" else ""
        lines.append(f"| ganforge seed-mnist nets, {precision}, {update} update{which} | {ours:.0f} | {ours / keras:.2f}× |")
    print(f"\n{header}\n\n" + "\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"header": header, "runs": runs, "table": lines}, indent=1))


if __name__ == "__main__":
    main()
