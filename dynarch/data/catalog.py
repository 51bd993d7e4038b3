"""Known TFDS image-classification datasets: shape and classes before TensorFlow is imported. Pure Python.

The spec needs `input_shape` and `num_classes` while the config is validated, long before TFDS can tell
(`tfds.builder(name).info` needs the prepared data or the network). This table gives them for the usual
datasets; after loading, the TFDS loader checks them against the dataset's own metadata. Figures from the
TFDS 4.9 builders (shapes, classes, split sizes) and their checksum files (download size, host).
A dataset not listed here still loads by name if `data.input_shape` and `data.num_classes` are set.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDataset:
    input_shape: tuple[int, int, int]
    num_classes: int
    train: int  # examples in the train split
    test: int  # examples in the test split
    download_mib: float  # what TFDS downloads the first time
    host: str  # where TFDS downloads it from (probed before downloading)
    port: int
    license: str


_GCS, _TORONTO = "storage.googleapis.com", "www.cs.toronto.edu"
_EMNIST = dict(
    download_mib=535.7,
    host="biometrics.nist.gov",
    port=443,
    license="NIST Special Database 19 terms (see https://www.nist.gov/srd/nist-special-database-19)",
)

KNOWN: dict[str, KnownDataset] = {
    "mnist": KnownDataset((28, 28, 1), 10, 60_000, 10_000, 11.1, _GCS, 443, "CC BY-SA 3.0 (Y. LeCun and C. Cortes)"),
    "fashion_mnist": KnownDataset(
        (28, 28, 1),
        10,
        60_000,
        10_000,
        29.4,
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        80,
        "MIT (Zalando Research)",
    ),
    "kmnist": KnownDataset((28, 28, 1), 10, 60_000, 10_000, 20.3, "codh.rois.ac.jp", 80, "CC BY-SA 4.0 (ROIS-DS CODH)"),
    "emnist/digits": KnownDataset((28, 28, 1), 10, 240_000, 40_000, **_EMNIST),
    "emnist/mnist": KnownDataset((28, 28, 1), 10, 60_000, 10_000, **_EMNIST),
    "emnist/balanced": KnownDataset((28, 28, 1), 47, 112_800, 18_800, **_EMNIST),
    "emnist/letters": KnownDataset((28, 28, 1), 37, 88_800, 14_800, **_EMNIST),  # labels 1..26 of 37 slots
    "emnist/bymerge": KnownDataset((28, 28, 1), 47, 697_932, 116_323, **_EMNIST),
    "emnist/byclass": KnownDataset((28, 28, 1), 62, 697_932, 116_323, **_EMNIST),
    "cifar10": KnownDataset(
        (32, 32, 3), 10, 50_000, 10_000, 162.2, _TORONTO, 443, "no license stated; cite Krizhevsky 2009"
    ),
    "cifar100": KnownDataset(
        (32, 32, 3), 100, 50_000, 10_000, 160.7, _TORONTO, 443, "no license stated; cite Krizhevsky 2009"
    ),
    "svhn_cropped": KnownDataset(
        (32, 32, 3),
        10,
        73_257,
        26_032,
        1502.6,
        "ufldl.stanford.edu",
        80,
        "non-commercial use only (Netzer et al. 2011)",
    ),
    "stl10": KnownDataset(
        (96, 96, 3), 10, 5_000, 8_000, 2518.1, "ai.stanford.edu", 80, "see https://cs.stanford.edu/~acoates/stl10/"
    ),
    "horses_or_humans": KnownDataset((300, 300, 3), 2, 1_027, 256, 153.6, _GCS, 443, "CC BY 2.0 (L. Moroney)"),
    "rock_paper_scissors": KnownDataset((300, 300, 3), 3, 2_520, 372, 219.5, _GCS, 443, "CC BY 2.0 (L. Moroney)"),
}

# The only dataset with an offline stand-in: the 5,000 real MNIST digits shipped in this package.
OFFLINE_STAND_IN = {"mnist": "subset:mnist_5k"}


def known(name: str) -> KnownDataset | None:
    return KNOWN.get(name)


def closest(name: str, options=None, n: int = 3) -> list[str]:
    """The nearest names (by spelling) among `options` (default: the table)."""
    return difflib.get_close_matches(str(name), list(options if options is not None else KNOWN), n=n, cutoff=0.5)


_AXES = {"height": 0, "width": 1, "channels": 2}


def lookup(field: str, name: str):
    """OmegaConf resolver `${dynarch.dataset:FIELD,NAME}` (FIELD: height, width, channels or num_classes): the
    table's value, or None when the name is not listed (validation then explains; a resolver must not raise,
    OmegaConf would bury the message). Primitives only, so `OmegaConf.resolve` (`--cfg job --resolve`) works."""
    entry = KNOWN.get(str(name).split(":", 1)[0])  # mnist:3.0.1 -> mnist
    if entry is None:
        return None
    return entry.input_shape[_AXES[field]] if field in _AXES else getattr(entry, field, None)


def register_resolver() -> None:
    """Make `${dynarch.dataset:num_classes,${..name}}` usable in conf/data/*.yaml (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dynarch.dataset"):
        OmegaConf.register_new_resolver("dynarch.dataset", lookup)


def table_markdown() -> str:
    """The table as markdown (README, `python -c 'from dynarch.data.catalog import table_markdown'`)."""
    rows = ["| name | input shape | classes | train | test | download | license |", "|---|---|---|---|---|---|---|"]
    for name, k in KNOWN.items():
        shape = "x".join(map(str, k.input_shape))
        rows.append(
            f"| {name} | {shape} | {k.num_classes} | {k.train:,} | {k.test:,} | {k.download_mib:,.1f} MiB "
            f"| {k.license} |"
        )
    return "\n".join(rows)
