"""ganforge: train GANs on image data, keep training stable, measure image quality and diversity."""

__version__ = "0.1.0"

from ganforge.config import Config, build_config, list_presets  # noqa: E402
from ganforge.data import load_dataset  # noqa: E402
from ganforge.sample import TrainedGenerator, load  # noqa: E402
from ganforge.train import train  # noqa: E402


def evaluate(path, **kwargs):
    """Evaluate a run or checkpoint (see `ganforge.metrics.evaluate.evaluate`); imports the metric engine lazily."""
    from ganforge.metrics.evaluate import evaluate as _evaluate

    return _evaluate(path, **kwargs)


def compare(paths, **kwargs):
    """Compare runs under one protocol (see `ganforge.metrics.compare.compare`); lazy like evaluate."""
    from ganforge.metrics.compare import compare as _compare

    return _compare(paths, **kwargs)


__all__ = [
    "Config",
    "TrainedGenerator",
    "build_config",
    "compare",
    "evaluate",
    "list_presets",
    "load",
    "load_dataset",
    "train",
]
