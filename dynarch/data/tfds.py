"""`data=mnist data.name=NAME` (alias `data=tfds`): any TFDS image-classification dataset by name.

Shape and classes come from the table in catalog.py (before TensorFlow) and are checked against the
dataset's own metadata once it is loaded. The download host is probed first because TFDS retries for
minutes offline. Offline and not prepared, only MNIST has a stand-in (the shipped 5,000 digits, recorded
as such in metrics.json); every other dataset is a clear error with the remedies.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np

import dynarch.data.catalog as catalog

from ..errors import ConfigError, DataError
from .arrays import Splits
from .probe import probe

log = logging.getLogger(__name__)

KEYS = ("data_dir", "offline_fallback", "probe_host", "probe_port", "probe_timeout_s")
NAME = re.compile(r"^[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:[0-9]+\.([0-9]+|\*)\.([0-9]+|\*))?$")
DEFAULT_HOST = ("storage.googleapis.com", 443)


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


def resolve(cfg):
    """Fill data.input_shape / data.num_classes from the table when left null; refuse unknown names."""
    if not NAME.match(cfg.name):
        raise ConfigError(
            "data.name",
            f"'{cfg.name}' is not a TFDS dataset name",
            expected="a TFDS name such as mnist, cifar10 or emnist/digits (optionally :VERSION)",
            received=cfg.name,
            fix="set data.name=cifar10 (see dynarch/data/catalog.py for the table)",
        )
    entry = catalog.known(base_name(cfg.name))
    if entry is None and (cfg.input_shape is None or cfg.num_classes is None):
        near = catalog.closest(base_name(cfg.name))
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            "data.name",
            f"'{cfg.name}' is not in dynarch's table of datasets, so its shape and "
            f"classes are not known before loading.{hint}",
            expected=f"one of {', '.join(catalog.KNOWN)}; or any TFDS image-classification dataset "
            "with data.input_shape and data.num_classes set",
            received=cfg.name,
            fix=(f"data.name={near[0]}" if near else "pick a listed name") + ", or add "
            "data.input_shape=[H,W,C] data.num_classes=N for another TFDS dataset",
        )
    if entry is not None:
        cfg = dataclasses.replace(
            cfg, input_shape=cfg.input_shape or entry.input_shape, num_classes=cfg.num_classes or entry.num_classes
        )
    return cfg


def _remedies(cfg, where: str, why: str) -> DataError:
    name = cfg.name
    stand_in = " (offline stand-in disabled: data.offline_fallback=false)" if name in catalog.OFFLINE_STAND_IN else ""
    return DataError(
        "data.name",
        f"TFDS '{name}' is not prepared in {where} and the network is unreachable: "
        f"{why}{stand_in}. Only MNIST has an offline stand-in; dynarch never trains on other data "
        "than the one asked for",
        expected="a prepared dataset or network access",
        received="neither",
        fix=f"data.data_dir=DIR of a prepared TFDS folder (`tfds build {name}` on a connected machine, "
        "then copy ~/tensorflow_datasets), or your own files: data=idx|npz|folder data.path=...",
    )


def _builder(cfg):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, KeyError) as e:
        known = tfds.list_builders(with_community_datasets=False)
        near = catalog.closest(base_name(cfg.name).split("/")[0], known)
        raise DataError(
            "data.name",
            f"TFDS has no dataset '{cfg.name}' ({str(e).splitlines()[0][:200]}).",
            expected="a TFDS builder name, e.g. " + ", ".join(near or ["mnist", "cifar10"]),
            received=cfg.name,
            fix=f"data.name={near[0]}" if near else "pick a name from https://www.tensorflow.org/datasets/catalog",
        ) from None


def _check_metadata(cfg, builder) -> tuple[str, str]:
    """The dataset's own shape and classes against the config's; returns the (image, label) keys."""
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(
            "data.name",
            f"TFDS '{cfg.name}' is not an (image, label) dataset",
            expected="an image-classification dataset",
            received=f"supervised keys {keys}",
            fix="use an image-classification dataset, or data=npz/folder with your own arrays",
        )
    shape = tuple(info.features[keys[0]].shape)
    classes = getattr(info.features[keys[1]], "num_classes", None)
    if shape != tuple(cfg.input_shape) or classes != cfg.num_classes:
        raise DataError(
            "data.name",
            f"TFDS '{cfg.name}' holds {list(shape)} images in {classes} classes, but the "
            f"config says data.input_shape={list(cfg.input_shape)}, data.num_classes={cfg.num_classes}",
            expected=f"input_shape {list(cfg.input_shape)}, {cfg.num_classes} classes",
            received=f"input_shape {list(shape)}, {classes} classes",
            fix=f"set data.input_shape={list(shape)} data.num_classes={classes} (or leave both null)"
            if None not in shape
            else "a variable-size dataset: resize it into data=folder or data=npz",
        )
    missing = [s for s in ("train", "test") if s not in info.splits]
    if missing and list(info.splits):  # empty: split metadata unknown here (e.g. mock data); reading will tell
        raise DataError(
            "data.name",
            f"TFDS '{cfg.name}' has no {' or '.join(missing)} split",
            expected="train and test splits",
            received=f"splits {list(info.splits)}",
            fix="export the splits you want into data=npz (x_train, y_train, x_test, y_test)",
        )
    return keys[0], keys[1]


def _prepare(cfg, builder) -> Splits | None:
    """Download when needed and possible; the MNIST stand-in offline; else a clear error."""
    if builder.is_prepared():
        return None
    entry = catalog.known(base_name(cfg.name))
    host = cfg.probe_host or (entry.host if entry else DEFAULT_HOST[0])
    port = cfg.probe_port or (entry.port if entry else DEFAULT_HOST[1])
    why = probe(host, port, cfg.probe_timeout_s)
    if why is None:
        try:
            builder.download_and_prepare()
        except Exception as e:  # network drop mid-download, checksum, disk: TFDS raises many kinds
            raise DataError(
                "data.name",
                f"downloading TFDS '{cfg.name}' failed: {type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''}",
                expected="a completed download",
                received="an error",
                fix="retry, or prepare it elsewhere and set data.data_dir",
            ) from None
        return None
    stand_in = catalog.OFFLINE_STAND_IN.get(cfg.name)
    if stand_in is None or not cfg.offline_fallback:
        raise _remedies(cfg, str(builder.data_dir), why)
    from .subset import load_mnist_5k

    log.warning(
        "TFDS %s is not prepared and %s: using the 5,000 real MNIST digits shipped with dynarch "
        "instead (recorded as the data source in metrics.json)",
        cfg.name,
        why,
    )
    train, test = load_mnist_5k()
    return Splits(train, test, f"{stand_in} (offline stand-in for tfds:{cfg.name})")


def load_splits(cfg) -> Splits:
    builder = _builder(cfg)
    stand_in = _prepare(cfg, builder)
    if stand_in is not None:
        return stand_in
    image, label = _check_metadata(cfg, builder)
    splits = []
    for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)):
        # Read no more than needed: limits apply to the split spec, not after loading everything.
        name = split if limit is None else f"{split}[:{limit}]"
        try:
            ds = builder.as_dataset(split=name, as_supervised=True)
        except (ValueError, KeyError) as e:  # e.g. no such split
            raise DataError(
                "data.name",
                f"TFDS '{cfg.name}' cannot give the {split} split ({str(e)[:200]})",
                expected="train and test splits",
                received=f"splits {list(builder.info.splits)}",
                fix="export the splits you want into data=npz (x_train, y_train, x_test, y_test)",
            ) from None
        # Large batches, then concatenate: batch_size=-1 aborts inside TF under tfds.testing.mock_data.
        batches = list(_numpy(ds.batch(8192)))
        x = np.concatenate([b[0] for b in batches]).astype(np.uint8)
        y = np.concatenate([b[1] for b in batches]).astype(np.int64)
        splits.append((x, y))
    return Splits(splits[0], splits[1], f"tfds:{cfg.name}")


def _numpy(ds):
    import tensorflow_datasets as tfds

    return tfds.as_numpy(ds)
