"""The TF-FID Inception v3 (torch-fidelity's `inception-v3-compat`): the literature's standard extractor.

Weights: pinned URL and SHA-256. Offline, pass `--inception-weights PATH` or set
GANFORGE_INCEPTION_WEIGHTS; a copy in ~/.cache/ganforge/inception/ is used when present.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ganforge.data import cache_dir, convert_channels
from ganforge.metrics.features import ExtractorError, file_sha256

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
# torch.hub's convention: the file name carries the first 8 hex digits of the SHA-256.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path(explicit: Optional[str] = None, download: bool = True) -> Path:
    """Where the weights are: --inception-weights, $GANFORGE_INCEPTION_WEIGHTS, the cache, else download."""
    given = explicit or os.environ.get("GANFORGE_INCEPTION_WEIGHTS")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ExtractorError(f"Inception weights file '{path}' does not exist.")
        return path
    cached = cache_dir() / "inception" / INCEPTION_FILE
    if cached.is_file():
        return cached
    if download:
        try:
            from torch.hub import download_url_to_file

            cached.parent.mkdir(parents=True, exist_ok=True)
            print(
                f"ganforge: downloading the FID Inception weights to {cached} ...", file=sys.stderr
            )
            download_url_to_file(
                INCEPTION_URL, str(cached), hash_prefix=INCEPTION_SHA256[:8], progress=True
            )
            return cached
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
    else:
        reason = "download disabled"
    raise ExtractorError(
        f"the FID Inception weights are not available ({reason}).\n"
        f"Get {INCEPTION_URL}\n(SHA-256 {INCEPTION_SHA256}) on a machine with internet access, then either put it at "
        f"{cached}, pass --inception-weights PATH, or set GANFORGE_INCEPTION_WEIGHTS=PATH. "
        "Offline, a domain extractor (--extractor mnist|fashion-mnist|cifar10) needs no download."
    )


class InceptionExtractor(nn.Module):
    """uint8 [N, C, H, W] -> (pool features [N, 2048], logits [N, 1008]) via torch-fidelity."""

    def __init__(self, path: Path):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:  # ganforge never runs code from a weights file: it must load as plain tensors first
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ExtractorError(
                f"refusing Inception weights '{path}': not a plain state dict ({type(e).__name__})."
            ) from None
        self.weights_sha256 = file_sha256(path)
        if self.weights_sha256 != INCEPTION_SHA256:
            warnings.warn(
                f"Inception weights {path} differ from the pinned TF-FID weights (sha256 {self.weights_sha256[:12]}); "
                "numbers are not comparable to published FID/IS.",
                stacklevel=2,
            )
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(path),
        )
        self.name = "inception"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = self.net(convert_channels(images, 3))
        return feats, logits

    def describe(self) -> dict:
        return {
            "extractor": "inception-v3-compat",
            "weights_sha256": self.weights_sha256,
            "input": "3x299x299",
        }


def load_inception(explicit: Optional[str] = None) -> InceptionExtractor:
    return InceptionExtractor(inception_weights_path(explicit))
