"""`default_data_config()`: every data option, with its default and what it means; and
`parse_data_overrides`, a run's data config changed from the command line."""

from __future__ import annotations

import ast
import functools
from collections.abc import Sequence

import ml_collections

from mtcolor.data import decode as decode_lib

SPLITS = ("train", "val")


def default_data_config() -> ml_collections.ConfigDict:
    """The data options, with defaults (the paper's preprocessing on the synthetic set)."""
    c = ml_collections.ConfigDict()
    # Where images come from: "synthetic" (generated, no download), "folder" (an ImageNet-style
    # tree root/<wnid or name>/*.JPEG), or "tfds" (a tfds image classification dataset read with
    # tfds.data_source from array_record files).
    c.source = "synthetic"
    # Square output size in pixels (the paper: 256). Must be a multiple of 32 for the models.
    c.image_size = 256
    # GLOBAL batch size; each of shard_count processes yields batch_size // shard_count.
    c.batch_size = 16
    # "stretch": bicubic to size x size, aspect not kept (the paper's reference tutorial);
    # "shorter_side_crop": shorter side to size, then the central square.
    c.resize_mode = "stretch"
    # Random horizontal flip with p=0.5 on training batches only (the paper's augmentation).
    c.random_flip = True
    # Shuffle the training set, with a new permutation each epoch (derived from the seed).
    c.shuffle = True
    # grain worker processes for decoding (0: decode in this process, with `read_threads` threads).
    # >0 needs absl flags parsed (absl.app.run); otherwise they are marked parsed here.
    c.worker_count = 0
    # Threads per process reading and decoding elements (Pillow and numpy release the GIL).
    c.read_threads = 2
    # Elements buffered per process ahead of use, and per worker in the worker->main queue.
    c.prefetch_buffer_size = 32
    c.worker_buffer_size = 2
    # Class subset: a list of wnids or class names (relabelled 0..k-1 in list order), or None for
    # every class of the source. The paper: [c.wnid for c in mtcolor.data.PAPER_CLASSES].
    # Ignored by the synthetic source (its classes are synthetic.num_classes).
    c.classes = None
    # Stop with TooManyBadInputsError once more than this fraction of files seen were bad
    # (zero-byte, truncated, corrupt, ...), checked after bad_check_min_examples files. None: never
    # stop.
    c.max_bad_fraction = 0.05
    c.bad_check_min_examples = 200
    # Files with a side below this (e.g. 1x1 pixels) are skipped as "too_small".
    c.min_image_side = decode_lib.DEFAULT_MIN_IMAGE_SIDE
    # Files declaring more pixels than this are skipped as "decompression_bomb" (Pillow's default).
    c.max_image_pixels = decode_lib.DEFAULT_MAX_IMAGE_PIXELS
    # Decode large JPEGs at a reduced DCT scale that is still >= image_size (much faster on
    # full-size photos; not bit-identical to a full decode + resize). False: always full decode.
    c.jpeg_draft = True
    # Drop near-grayscale photos from TRAINING batches: an image whose mean chroma
    # sqrt(a^2 + b^2) (CIELAB units, after resizing) is below this is skipped and counted as
    # "near_grayscale". None: off. 1.0 is a good value: on 1,300 ImageNet validation photos it drops
    # the 13 stored-as-RGB grayscale ones (chroma 0) and 8 nearly colourless ones (docs/data.md).
    # A typed placeholder so that command-line overrides
    # (--config.data.grayscale_filter_threshold=1) work although the default is None.
    c.grayscale_filter_threshold = ml_collections.config_dict.placeholder(float)
    # How training reads the data (docs/data.md, "Device-resident input"). "grain": this module's
    # pipeline, decoding every step on the host. "resident" (mtcolor.data.resident): each split
    # decoded once into a cache file, kept on the devices, batches (flip, Lab) made on device;
    # labelled data only (not with data.unlabeled). "auto": resident when the uint8 images fit
    # in resident.max_memory_fraction of a device's memory (CPU: host RAM) and data.unlabeled is
    # off, else grain; a resumed run keeps the path its checkpoints were written with. The log's
    # "input path:" line says which and why.
    c.input_path = "auto"
    c.resident = ml_collections.ConfigDict()
    # Where the decoded caches live ("": $XDG_CACHE_HOME/mtcolor/resident, by default
    # ~/.cache/mtcolor/resident); one .npz per split, named by
    # the source and a digest of its files (paths, sizes, mtimes), the image size and decode
    # options.
    c.resident.cache_dir = ""
    c.resident.max_memory_fraction = 0.25  # "auto"'s ceiling for the replicated uint8 images

    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.train_size = 2000
    c.synthetic.val_size = 250
    c.synthetic.num_classes = 5
    c.synthetic.seed = 0  # the generator's seed: the same pixels every run (not the shuffle seed)

    c.folder = ml_collections.ConfigDict()
    # e.g. /data/imagenet/train (class folders), or a folder of photos without classes: no labels,
    # enough for a colorizer (a classification task is refused at start).
    c.folder.train_root = ""
    # e.g. /data/imagenet/val (re-sorted into class folders); "" means train_root, which then needs
    # split files so that validation is not the training set.
    c.folder.val_root = ""
    # Optional lists of files per split (see mtcolor.data.folder): "relative/path [class]" lines or
    # a CSV with file and wnid/class/name columns.
    c.folder.train_split_file = ""
    c.folder.val_split_file = ""

    c.tfds = ml_collections.ConfigDict()
    c.tfds.name = "imagenet2012"  # any tfds image classification dataset prepared as array_record
    c.tfds.data_dir = ""  # "" : tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.tfds.train_split = "train"
    c.tfds.val_split = "validation"
    c.tfds.image_key = "image"
    c.tfds.label_key = "label"
    # Where the per-split label index for class subsets is cached ("" : ~/.cache/mtcolor/tfds).
    c.tfds.label_cache_dir = ""

    # A second, UNLABELED training source for colorization (the paper's section V-B: colorization is
    # self-supervised, so it can learn from far more images than classification has labels). Every
    # training batch then holds batch_size - n labelled examples followed by n unlabeled ones,
    # n = round(fraction * batch_size); unlabeled rows have label 0 and has_label 0. Evaluation and
    # the epoch length (labelled examples only) are unaffected; docs/data.md, "Unlabeled images".
    c.unlabeled = ml_collections.ConfigDict()
    # None: off (labelled data only). "folder": every image under unlabeled.folder.root at any depth
    # (a flat folder or a class tree; labels are not read). "tfds": a split of any tfds dataset with
    # images. "synthetic": generated images distinct from the labelled synthetic ones.
    # A typed placeholder so that --config.data.unlabeled.source=folder works.
    c.unlabeled.source = ml_collections.config_dict.placeholder(str)
    # Fraction of every global training batch drawn from the unlabeled source, 0 < fraction < 1. The
    # same number, round(fraction * batch_size), in every batch; it must be divisible by the number
    # of processes (each process takes its share of both streams).
    c.unlabeled.fraction = 0.5
    # The grayscale filter of the unlabeled stream, ON by default: an unlabeled image with mean
    # chroma below this (CIELAB units, as grayscale_filter_threshold) is skipped and counted as
    # "near_grayscale"; such photos only teach a colorizer to predict grey, and unlabeled photo
    # collections are unvetted. 2.0 is below the just-noticeable colour difference (about 2.3), so
    # it drops photos that look grey: 31 of 1,300 ImageNet validation photos (13 of them grayscale
    # stored as RGB), keeping muted ones. None: off.
    c.unlabeled.grayscale_threshold = 2.0
    c.unlabeled.folder = ml_collections.ConfigDict()
    # e.g. /data/photos or /data/imagenet/train (class folders are just folders here)
    c.unlabeled.folder.root = ""
    # Optional list of files: "relative/path" lines (a class column is ignored) or a CSV with a
    # file column (as data.folder split files).
    c.unlabeled.folder.split_file = ""
    c.unlabeled.tfds = ml_collections.ConfigDict()
    c.unlabeled.tfds.name = ""  # any tfds dataset with an image feature, prepared as array_record
    c.unlabeled.tfds.data_dir = ""  # "" : tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.unlabeled.tfds.split = "train"  # any tfds split expression, e.g. "train[10%:]"
    c.unlabeled.tfds.image_key = "image"
    c.unlabeled.synthetic = ml_collections.ConfigDict()
    c.unlabeled.synthetic.size = 2000  # number of generated unlabeled images
    # The generator's seed; the unlabeled images differ from the labelled ones even with one seed.
    c.unlabeled.synthetic.seed = 0
    return c


def parse_data_overrides(data_config, items: Sequence[str]) -> tuple[dict, list[str]]:
    """``data.KEY=VALUE`` items (the ``--override`` of experiments.evaluate and experiments.report)
    as {KEY: VALUE typed as the run's field is}, and one problem line per item that is not one.
    Only data fields: where the data is now (a run evaluated on another machine), the batch, the
    workers; the model and the image size are the checkpoint's."""
    overrides, problems = {}, []
    for item in items:
        key, sep, text = item.partition("=")
        flag = f"--override={item!r}"
        if not sep or not key.startswith("data."):
            problems.append(f"{flag}: must be data.KEY=VALUE (e.g. data.folder.val_root=/data/val)")
            continue
        parts = key[len("data.") :].split(".")
        try:
            node = functools.reduce(lambda group, part: group[part], parts, data_config)
        except (KeyError, TypeError, AttributeError):  # no such group or field
            node = _NO_FIELD
        if node is _NO_FIELD or hasattr(node, "keys"):
            problems.append(f"{flag}: the run's data config has no field {key!r}")
            continue
        try:
            overrides[".".join(parts)] = _typed_like(node, text)
        except ValueError:
            problems.append(f"{flag}: {key} is {type(node).__name__}, {text!r} is not one")
    return overrides, problems


_NO_FIELD = object()


def _typed_like(current, text: str):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    if isinstance(current, (int, float)):
        return type(current)(text)
    if current is None:  # a field the run left unset (a threshold, a count): a number if it is one
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if isinstance(value, (int, float)) else text
    return text
