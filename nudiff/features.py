"""ResNet50 patch features for choosing labelled subsets (spec section 2).

Each patch becomes the 2048-d global-average-pooled output of a ResNet50
(torchvision), after resizing to ``resize``, centre-cropping to ``crop`` and
ImageNet normalisation, as the authors' code does.

Weights never download at run time. ``weights`` is one of:

* ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` file, read from torchvision's
  cache (``$TORCH_HOME/hub/checkpoints``); if it is not there, a clear error says
  how to put it there.
* a path to a ResNet50 state dict (for a cluster without internet).
* ``"none"``: a randomly initialised network (seeded). Such features still
  group patches by colour and texture, but they are not what the paper used:
  this is logged as a warning in capitals so nobody mistakes it for the real thing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2 as transforms

from nudiff.datasets.prepare import read_manifest
from nudiff.errors import ConfigError, InputDataError
from nudiff.io.atomic import atomic_path
from nudiff.logs import log_progress
from nudiff.patches import read_patch_index
from nudiff.samples import SampleReader, real_samples

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 2048


def imagenet_weights_file() -> Path:
    """Where torchvision keeps the ImageNet ResNet50 weights once downloaded."""
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_resnet50(weights: str | Path, *, seed: int = 0) -> nn.Module:
    """ResNet50 without its classifier, in eval mode, returning ``(B, 2048)`` features.

    Args:
        weights: ``"imagenet"``, ``"none"`` or a path to a state dict (see module doc).
        seed: initialises the random weights when ``weights == "none"``.
    """
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    if weights == "none":
        logger.warning(
            "FEATURES FROM AN UNTRAINED RESNET50 (features.weights: none). Subsets are still chosen by "
            "K-means, but on random-network features, not the ImageNet features of the paper."
        )
    else:
        path = imagenet_weights_file() if weights == "imagenet" else Path(weights)
        if not path.is_file():
            hint = (
                ' Run once, with internet: python -c "import torchvision; '
                "torchvision.models.resnet50(weights='IMAGENET1K_V1')\", or copy the file there, "
                "or set features.weights to a local file or to none."
                if weights == "imagenet"
                else ""
            )
            raise ConfigError(f"features.weights: ResNet50 weights file not found: {path}.{hint}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as err:
            raise InputDataError(f"cannot load ResNet50 weights from {path}: {err}") from err
        logger.info("ResNet50 weights loaded from %s", path)
    model.fc = nn.Identity()
    return model.eval()


def preprocessing(resize: int = 256, crop: int = 224) -> transforms.Compose:
    """Resize, centre-crop and ImageNet-normalise a ``(B, 3, H, W)`` uint8 batch."""
    return transforms.Compose(
        [
            transforms.Resize(resize, antialias=True),
            transforms.CenterCrop(crop),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@torch.no_grad()
def extract_features(
    patches: Sequence[np.ndarray],
    *,
    weights: str | Path = "imagenet",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Features of RGB patches.

    Args:
        patches: a sequence of ``(S, S, 3)`` uint8 arrays (anything with
            ``len`` and integer indexing, e.g. a lazy patch reader).
        weights, seed: see :func:`load_resnet50`.
        resize, crop: preprocessing sizes (paper: 256 and 224).
        batch_size: patches per forward pass.

    Returns:
        ``(N, 2048)`` float32 array, row ``i`` for ``patches[i]``.
    """
    model = load_resnet50(weights, seed=seed).to(device)
    prep = preprocessing(resize, crop)
    n = len(patches)
    out = np.empty((n, FEATURE_DIM), dtype=np.float32)
    starts = range(0, n, batch_size)
    for start in log_progress(starts, desc="ResNet50 features (batches)", logger=logger):
        stop = min(start + batch_size, n)
        batch = np.stack([patches[i] for i in range(start, stop)])
        x = prep(torch.from_numpy(batch).permute(0, 3, 1, 2)).to(device)
        out[start:stop] = model(x).float().cpu().numpy()
    return out


class _Images:
    """The RGB half of a :class:`~nudiff.samples.SampleReader`, as a lazy sequence."""

    def __init__(self, reader: SampleReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.reader[i][0]


def compute_features(prepared_dir: str | Path, index_csv: str | Path, out_npz: str | Path, **options) -> np.ndarray:
    """Rule ``compute_features``: features of every indexed patch, saved with their patch ids.

    ``options`` are those of :func:`extract_features`. The ``.npz`` holds
    ``patch_id`` (N,), ``features`` (N, 2048) float32 and ``weights`` (what was used).
    """
    manifest = read_manifest(Path(prepared_dir) / "manifest.csv")
    index = read_patch_index(index_csv)
    reader = SampleReader(real_samples(index, manifest))
    features = extract_features(_Images(reader), **options)
    with atomic_path(out_npz) as tmp:
        np.savez(
            tmp,
            patch_id=index["patch_id"].to_numpy(str),
            features=features,
            weights=np.array(str(options.get("weights", "imagenet"))),
        )
    return features
