"""Any tfds image-classification dataset, read with `tfds.data_source` (array_record, no
TensorFlow).

Named `tfds_source` so it never shadows the `tensorflow_datasets` package. The dataset must have
been prepared in the array_record format: `python -m mtcolor.data.tfds_source NAME
--data_dir=DIR` (`prepare`); imagenet2012 needs its tars in the manual directory first
(docs/data.md). A run never prepares one itself (a missing dataset is
`TfdsDatasetNotPreparedError`, naming the directory and that command). Images are read as their
encoded bytes (tfds decoding skipped) and decoded by `mtcolor.data.decode` like files, so bad
records are skipped and counted the same way.

A class subset (names from the label feature, e.g. wnids for imagenet2012, or the paper's class
names) is relabelled 0..k-1 in the order given. Selecting it needs every record's label: the first
use reads the split once (images are not decoded, but the records are read) and caches the labels as
`<label_cache_dir>/<name>/<version>/<split>.labels.npy` (~/.cache/mtcolor/tfds by default); later
runs load that file. For imagenet2012 train the first scan reads the whole split (~140 GB).

With `label_key=None` (the unlabeled colorization stream) labels are not read: any dataset with an
image feature works, every record gets label 0 and `classes` must be None.

`tensorflow_datasets` is imported inside functions: `import mtcolor.data.pipeline` stays light.
"""

from __future__ import annotations

import os
import re

import numpy as np

from mtcolor.data import PAPER_CLASSES, DataNotFoundError, unknown_classes_error

_PAPER_NAME_TO_WNID = {c.name: c.wnid for c in PAPER_CLASSES}
_DEFAULT_CACHE = os.path.join("~", ".cache", "mtcolor", "tfds")


class TfdsDatasetNotPreparedError(DataNotFoundError):
    """A tfds dataset that is not prepared as array_record in its data directory (or is no tfds
    dataset at all); the message names the directory and the command that prepares it."""


def data_dir_or_default(data_dir: str | None) -> str:
    """The directory tfds reads ``data_dir=None`` from; a local one as an absolute path."""
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if "://" in where:  # gs://..., read by tfds through etils.epath
        return where
    return os.path.abspath(os.path.expanduser(where))


def _dataset_folder(name: str, data_dir: str | None) -> str:
    """Where tfds keeps dataset ``name[/config][:version]``: <data_dir>/<name>[/<config>]."""
    return os.path.join(data_dir_or_default(data_dir), name.split(":")[0])


def _not_prepared_message(name: str, data_dir: str | None, reason: str) -> str:
    where = data_dir_or_default(data_dir)
    prepare = f"python -m mtcolor.data.tfds_source {name} --data_dir={where}"
    if name.startswith("imagenet2012"):
        hint = (
            "imagenet2012 must be downloaded by hand: put ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {os.path.join(where, 'downloads', 'manual')}/ and run "
            f"`{prepare}` (hours, ~150 GB; docs/data.md)"
        )
    else:
        hint = f"prepare it with `{prepare}`"
    return f"tfds dataset {name!r} is not prepared as array_record in {where!r} ({reason}); {hint}"


def prepare(name: str, data_dir: str | None = None) -> str:
    """Prepares tfds dataset `name` in `data_dir` as array_record (what this module reads) and
    returns the directory it is in.

    What `tfds build NAME --file_format=array_record` does, without its command: tensorflow-datasets
    4.9.10's `tfds` command imports apache_beam before it starts (its convert_format command),
    which nothing else here needs."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir_or_default(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


class TfdsSource:
    """grain random-access source of {"encoded", "label", "key"} records from a tfds split."""

    def __init__(
        self,
        name: str,
        *,
        split: str,
        data_dir: str | None = None,
        classes: list[str] | None = None,
        image_key: str = "image",
        label_key: str | None = "label",
        label_cache_dir: str | None = None,
    ):
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.image_key = image_key
        self.label_key = label_key
        source = self._open()
        features = source.dataset_info.features
        for key in (image_key, label_key):
            if key is not None and key not in features:
                raise KeyError(
                    f"tfds dataset {name!r} has no feature {key!r}; it has {list(features.keys())}"
                )
        self.version = str(source.dataset_info.version)

        if label_key is None:  # unlabeled: every record, label 0
            if classes is not None:
                raise ValueError("a tfds class subset needs label_key; got label_key=None")
            self.class_names = ()
            self._indices = None
            self._label_map = None
        elif classes is None:
            all_names = list(features[label_key].names)
            self.class_names = tuple(all_names)
            self._indices = None
            self._label_map = None
        else:
            all_names = list(features[label_key].names)
            wanted = []
            missing = []
            for c in classes:
                candidate = c if c in all_names else _PAPER_NAME_TO_WNID.get(c.replace("_", " "))
                if candidate in all_names:
                    wanted.append(all_names.index(candidate))
                else:
                    missing.append(c)
            if missing:
                raise unknown_classes_error(
                    missing,
                    f"tfds dataset {name!r} (feature {label_key!r})",
                    all_names,
                    available_label="available names",
                )
            self.class_names = tuple(classes)
            labels = self._labels(source, label_cache_dir)
            self._label_map = {original: new for new, original in enumerate(wanted)}
            self._indices = np.flatnonzero(np.isin(labels, wanted)).astype(np.int64)
            if not len(self._indices):
                raise ValueError(
                    f"tfds {name!r} split {split!r} has no records of classes {list(classes)}"
                )
        self._length = len(source) if self._indices is None else len(self._indices)
        self._source = source

    def _open(self):
        folder = _dataset_folder(self.name, self.data_dir)
        if "://" not in folder and not os.path.isdir(folder):
            # Checked before tfds is asked: its builder for a dataset it does not find warns and
            # leaves an empty temporary directory behind (tensorflow-datasets 4.9.10).
            reason = f"no {folder}"
            raise TfdsDatasetNotPreparedError(
                _not_prepared_message(self.name, self.data_dir, reason)
            )
        import tensorflow_datasets as tfds

        try:
            # download=False: a dataset that is not there is an error, not tfds generating it
            # (hours for imagenet2012, from tars it cannot download) in the middle of a run.
            return tfds.data_source(
                self.name,
                split=self.split,
                data_dir=self.data_dir,
                download=False,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
            )
        except Exception as e:  # noqa: BLE001 (DatasetNotFoundError, NotImplementedError, ...)
            # (tfds's reasons for a dataset never prepared name file formats and empty splits.)
            if type(e).__name__ == "DatasetNotFoundError":
                reason = f"tfds knows no dataset {self.name.split('/')[0].split(':')[0]!r}"
            else:
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            message = _not_prepared_message(self.name, self.data_dir, reason)
            raise TfdsDatasetNotPreparedError(message) from e

    def _labels(self, source, label_cache_dir: str | None) -> np.ndarray:
        cache_root = os.path.expanduser(label_cache_dir or _DEFAULT_CACHE)
        safe_split = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.split)
        path = os.path.join(cache_root, self.name, self.version, f"{safe_split}.labels.npy")
        if os.path.exists(path):
            labels = np.load(path)
            if len(labels) == len(source):
                return labels
        labels = np.fromiter(
            (int(source[i][self.label_key]) for i in range(len(source))), np.int64, len(source)
        )
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, labels)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a rescan next time
        return labels

    def __getstate__(self):
        # Workers reopen the source themselves rather than receive open file handles.
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if self._source is None:
            self._source = self._open()
        index = int(index)
        original = index if self._indices is None else int(self._indices[index])
        example = self._source[original]
        label = 0 if self.label_key is None else int(example[self.label_key])
        if self._label_map is not None:
            label = self._label_map[label]
        return {
            "encoded": example[self.image_key],
            "label": label,
            "key": f"tfds:{self.name}/{self.split}[{original}]",
        }

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, num_examples={len(self)})"


def main(argv) -> None:
    """``python -m mtcolor.data.tfds_source NAME [--data_dir=DIR]``: prepares NAME (`prepare`)."""
    import sys

    from absl import app, flags

    if len(argv) != 2:
        raise app.UsageError("give one tfds dataset name, e.g. imagenet2012")
    name, data_dir = argv[1], flags.FLAGS.data_dir
    try:
        where = prepare(name, data_dir)
    except AssertionError as error:  # tfds's word for a missing manual download
        print(f"error: {name}: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"prepared {name!r} in {where}")
    print(
        f"train on it with --config.data.source=tfds --config.data.tfds.name={name} "
        f"--config.data.tfds.data_dir={data_dir_or_default(data_dir)}"
    )


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string(
        "data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    app.run(main)
