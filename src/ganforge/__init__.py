"""ganforge: train GANs on image data, keep training stable, measure image quality and diversity."""

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562) so that `import ganforge` (and the CLI's `--help`,
# `--version`, `presets`) does not pay for torch: ganforge.train, ganforge.load, ... work as usual.
_LAZY = {
    "Config": "ganforge.config",
    "build_config": "ganforge.config",
    "list_presets": "ganforge.config",
    "load_dataset": "ganforge.data",
    "TrainedGenerator": "ganforge.sample",
    "load": "ganforge.sample",
    "train": "ganforge.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ganforge' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
