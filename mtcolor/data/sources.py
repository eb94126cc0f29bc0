"""The image sources a data config names, their sizes and how a training batch is split between
the labelled source and the unlabeled one (data.unlabeled)."""

from __future__ import annotations

import math

import ml_collections

from mtcolor.data.config import SPLITS

UNLABELED_SOURCES = ("folder", "tfds", "synthetic")


def make_source(data_config: ml_collections.ConfigDict, split: str):
    """The random-access source (grain data source protocol) of one split: "train" or "val", or
    "unlabeled" (the source of data.unlabeled; its records' labels are not used)."""
    if split == "unlabeled":
        return _make_unlabeled_source(data_config)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS + ('unlabeled',)}, got {split!r}")
    kind = data_config.source
    if kind == "synthetic":
        from mtcolor.data.synthetic import SyntheticSource

        s = data_config.synthetic
        return SyntheticSource(
            split=split,
            size=data_config.image_size,
            num_examples=s.train_size if split == "train" else s.val_size,
            num_classes=s.num_classes,
            seed=s.seed,
        )
    if kind == "folder":
        from mtcolor.data.folder import FolderSource

        f = data_config.folder
        train_root = f.train_root
        root = train_root if split == "train" else (f.val_root or train_root)
        split_file = f.train_split_file if split == "train" else f.val_split_file
        if split == "val" and not f.val_root and not (f.train_split_file and f.val_split_file):
            raise ValueError(
                "data.folder.val_root is empty: set it to the validation tree, or give both "
                "data.folder.train_split_file and val_split_file so train_root is split in two"
            )
        if not root:
            raise ValueError("data.source is 'folder' but data.folder.train_root is empty")
        classes = _as_list(data_config.classes)
        if split == "val" and classes is None:
            # Labels are positions in a class list. Without data.classes each split would list its
            # own, and a validation tree lacking one class (or with a stray folder) would shift
            # every later label; the training split's list labels both.
            train_classes = make_source(data_config, "train").class_dirs
            if not train_classes:  # unlabeled training images: validation's labels are not read
                return FolderSource(root, split_file=split_file or None)
            return FolderSource(root, split_file=split_file or None, label_classes=train_classes)
        return FolderSource(root, classes=classes, split_file=split_file or None)
    if kind == "tfds":
        from mtcolor.data.tfds_source import TfdsSource

        t = data_config.tfds
        return TfdsSource(
            t.name,
            split=t.train_split if split == "train" else t.val_split,
            data_dir=t.data_dir or None,
            classes=_as_list(data_config.classes),
            image_key=t.image_key,
            label_key=t.label_key,
            label_cache_dir=t.label_cache_dir or None,
        )
    raise ValueError(f"data.source must be 'synthetic', 'folder' or 'tfds', got {kind!r}")


def _make_unlabeled_source(data_config: ml_collections.ConfigDict):
    u = data_config.get("unlabeled")
    kind = u.source if u is not None else None
    if kind is None:
        raise ValueError("data.unlabeled.source is None: there is no unlabeled source")
    if kind == "folder":
        from mtcolor.data.folder import ImageFilesSource

        if not u.folder.root:
            raise ValueError(
                "data.unlabeled.source is 'folder' but data.unlabeled.folder.root is empty"
            )
        return ImageFilesSource(u.folder.root, split_file=u.folder.split_file or None)
    if kind == "tfds":
        from mtcolor.data.tfds_source import TfdsSource

        if not u.tfds.name:
            raise ValueError(
                "data.unlabeled.source is 'tfds' but data.unlabeled.tfds.name is empty"
            )
        return TfdsSource(
            u.tfds.name,
            split=u.tfds.split,
            data_dir=u.tfds.data_dir or None,
            image_key=u.tfds.image_key,
            label_key=None,
        )
    if kind == "synthetic":
        from mtcolor.data.synthetic import SyntheticSource

        return SyntheticSource(
            split="unlabeled",
            size=data_config.image_size,
            num_examples=u.synthetic.size,
            num_classes=data_config.synthetic.num_classes,
            seed=u.synthetic.seed,
        )
    raise ValueError(
        f"data.unlabeled.source must be None or one of {UNLABELED_SOURCES}, got {kind!r}"
    )


def unlabeled_per_batch(data_config: ml_collections.ConfigDict) -> int:
    """Unlabeled examples in every GLOBAL training batch: round(fraction * batch_size), 0 if off."""
    u = data_config.get("unlabeled")
    if u is None or u.source is None:
        return 0
    if u.source not in UNLABELED_SOURCES:
        raise ValueError(
            f"data.unlabeled.source must be None or one of {UNLABELED_SOURCES}, got {u.source!r}"
        )
    fraction = u.fraction
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ValueError(f"data.unlabeled.fraction must be in (0, 1), got {fraction!r}")
    batch_size = int(data_config.batch_size)
    count = int(math.floor(fraction * batch_size + 0.5))
    if not 0 < count < batch_size:
        raise ValueError(
            f"data.unlabeled.fraction {fraction} of batch_size {batch_size} gives {count} "
            f"unlabeled examples per batch: need at least one labelled and one unlabeled"
        )
    return count


def labelled_per_batch(data_config: ml_collections.ConfigDict) -> int:
    """Labelled examples in every GLOBAL training batch (batch_size without unlabeled ones)."""
    return int(data_config.batch_size) - unlabeled_per_batch(data_config)


def steps_per_epoch(data_config: ml_collections.ConfigDict) -> int:
    """Training steps per epoch of the LABELLED source: num_examples("train") // labelled_per_batch
    (at least 1); the unlabeled stream does not count (it cycles on its own)."""
    return max(1, num_examples(data_config, "train") // labelled_per_batch(data_config))


def _as_list(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        return [c.strip() for c in classes.split(",") if c.strip()]
    return list(classes)


def class_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The names of the classes the labels index, in label order (the training split's: what a
    classification head must predict); None when the source has no labels."""
    names = tuple(getattr(make_source(data_config, "train"), "class_names", ()) or ())
    return names or None


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Number of files/records of a split, over all processes, before bad files are skipped."""
    return len(make_source(data_config, split))
