"""Sources: synthetic, ImageNet-style folders (class subsets, split files, errors) and tfds."""

import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
from test_data_files import colorful, write_tree

from mtcolor.data import PAPER_CLASSES, pipeline
from mtcolor.data.folder import FolderSource
from mtcolor.data.synthetic import SyntheticSource


def test_paper_classes():
    assert [(c.name, c.imagenet_index, c.wnid) for c in PAPER_CLASSES] == [
        ("sea snake", 65, "n01751748"),
        ("sea anemone", 108, "n01914609"),
        ("sea cucumber", 329, "n02321529"),
        ("lionfish", 396, "n02643566"),
        ("puffer", 397, "n02655020"),
    ]


def test_synthetic_is_deterministic_random_access_and_not_one_colour_per_class():
    a = SyntheticSource(split="train", size=32, num_examples=200, seed=0)
    b = SyntheticSource(split="train", size=32, num_examples=200, seed=0)
    np.testing.assert_array_equal(a[17]["rgb"], b[17]["rgb"])
    assert not np.array_equal(
        a[17]["rgb"], SyntheticSource(split="train", size=32, num_examples=200, seed=1)[17]["rgb"]
    )
    assert not np.array_equal(
        a[3]["rgb"], SyntheticSource(split="val", size=32, num_examples=200)[3]["rgb"]
    )
    labels = np.array([a[i]["label"] for i in range(200)])
    assert np.bincount(labels, minlength=5).min() >= 25  # roughly balanced
    with pytest.raises(IndexError):
        a[200]
    # Within one class, images differ in colour (mean RGB spread), not just in shape.
    class0 = np.array([a[i]["rgb"].reshape(-1, 3).mean(0) for i in np.flatnonzero(labels == 0)])
    assert class0.std(0).max() > 10
    # Pixels of one image vary in hue: more than a handful of distinct colours.
    assert len(np.unique(a[0]["rgb"].reshape(-1, 3) // 16, axis=0)) > 10


@pytest.fixture()
def tree(tmp_path):
    write_tree(tmp_path / "train", {"n01751748": 3, "n02643566": 2, "lionfish_x": 1})
    return tmp_path / "train"


def test_folder_selects_classes_by_wnid_or_paper_name_in_given_order(tree):
    (tree / "n01751748" / "readme.txt").write_text("ignored")
    source = FolderSource(str(tree), classes=["lionfish", "n01751748"])
    assert source.class_dirs == ("n02643566", "n01751748")
    assert len(source) == 5
    assert [source[i]["label"] for i in range(5)] == [0, 0, 1, 1, 1]
    assert all(source[i]["path"].endswith(".JPEG") for i in range(5))
    everything = FolderSource(str(tree))
    assert (
        everything.class_dirs == ("lionfish_x", "n01751748", "n02643566") and len(everything) == 6
    )


def test_folder_errors_say_what_was_looked_for(tree, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown class.*sea cucumber.*n02321529.*available: lionfish_x"
    ):
        FolderSource(str(tree), classes=["sea cucumber"])
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        FolderSource(str(tmp_path / "missing_dir"))
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        FolderSource(str(tmp_path / "empty"))


def test_folder_split_files_text_and_csv(tree, tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("# validation files\nn01751748/img000.JPEG\nn02643566/img001.JPEG\n\n")
    source = FolderSource(str(tree), split_file=str(listing), classes=["n01751748", "n02643566"])
    assert [p.split("/")[-2:] for p in source.paths] == [
        ["n01751748", "img000.JPEG"],
        ["n02643566", "img001.JPEG"],
    ]
    assert list(source.labels) == [0, 1]
    # A flat folder labelled by a CSV, the layout of ILSVRC2012 validation and ../shared/data.
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        colorful(i).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "file,label,wnid,name\n"
        "ILSVRC2012_val_00000000.JPEG,396,n02643566,lionfish\n"
        "ILSVRC2012_val_00000001.JPEG,65,n01751748,sea snake\n"
        "ILSVRC2012_val_00000002.JPEG,1,n01443537,goldfish\n"
        "ILSVRC2012_val_00000003.JPEG,396,n02643566,lionfish\n"
    )
    source = FolderSource(str(flat), split_file=str(csv_file), classes=["lionfish", "n01751748"])
    assert [p.split("/")[-1][-8:] for p in source.paths] == ["000.JPEG", "001.JPEG", "003.JPEG"]
    assert list(source.labels) == [0, 1, 0]  # the goldfish row is not selected


def _folder_config(tmp_path, **folder):
    config = pipeline.default_data_config()
    config.source = "folder"
    for key, value in folder.items():
        config.folder[key] = str(value)
    return config


def test_validation_labels_follow_the_training_classes(tmp_path):
    # Without data.classes, a validation tree lacking a class must still label each image as
    # training labels its class. Reference: training's sorted folders apple=0, banana=1, cherry=2.
    write_tree(tmp_path / "train", {"apple": 1, "banana": 1, "cherry": 1})
    write_tree(tmp_path / "val", {"apple": 2, "cherry": 2}, seed=1)
    config = _folder_config(tmp_path, train_root=tmp_path / "train", val_root=tmp_path / "val")
    val = pipeline.make_source(config, "val")
    assert [(p.split("/")[-2], val[i]["label"]) for i, p in enumerate(val.paths)] == [
        ("apple", 0),
        ("apple", 0),
        ("cherry", 2),
        ("cherry", 2),
    ]
    assert pipeline.class_names(config) == ("apple", "banana", "cherry")
    # The same through split files over one flat folder, classes from the CSV's wnid column.
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        colorful(i).save(flat / f"{i}.JPEG")
    (tmp_path / "train.csv").write_text("file,wnid\n0.JPEG,n1\n1.JPEG,n2\n2.JPEG,n3\n")
    (tmp_path / "val.csv").write_text("file,wnid\n2.JPEG,n3\n0.JPEG,n1\n")
    config = _folder_config(
        tmp_path,
        train_root=flat,
        train_split_file=tmp_path / "train.csv",
        val_split_file=tmp_path / "val.csv",
    )
    assert list(pipeline.make_source(config, "val").labels) == [2, 0]
    # A root that the split file's paths are not relative to (the photos one folder deeper, as
    # in ../shared/data): an error at start naming both, not every file skipped as unreadable.
    (tmp_path / "outer").mkdir()
    flat.rename(tmp_path / "outer" / "images")
    config.folder.train_root = str(tmp_path / "outer")
    with pytest.raises(
        FileNotFoundError,
        match=r"train\.csv.*none of its first 3 files exist.*"
        r"outer.*has the folders \['images'\]",
    ):
        pipeline.make_source(config, "train")
    # A validation class that training lacks has no label: an error naming it, not label 2.
    write_tree(tmp_path / "val", {"durian": 1}, seed=2)
    config = _folder_config(tmp_path, train_root=tmp_path / "train", val_root=tmp_path / "val")
    with pytest.raises(ValueError, match=r"class\(es\) the training split does not have: durian"):
        pipeline.make_source(config, "val")
    # With data.classes given, the subset labels both splits (and validation may lack none).
    config.classes = ["cherry", "apple"]
    assert list(pipeline.make_source(config, "val").labels) == [0, 0, 1, 1]


def test_a_folder_of_photos_without_class_folders_is_unlabeled(tmp_path):
    # A colorizer's photos in one folder: every image directly in it, label 0, no class names
    # (a classification task is then refused: tests/test_config_validation.py).
    flat = tmp_path / "photos"
    flat.mkdir()
    for name in ("b.jpg", "a.JPEG", "c.png"):
        colorful(len(name)).save(flat / name)
    (flat / "notes.txt").write_text("not an image")
    colorful(9).save(flat / ".hidden.jpg")
    source = FolderSource(str(flat))
    assert [p.split("/")[-1] for p in source.paths] == ["a.JPEG", "b.jpg", "c.png"]
    assert list(source.labels) == [0, 0, 0] and source.class_names == ()
    assert source[1] == {"path": str(flat / "b.jpg"), "label": 0, "key": str(flat / "b.jpg")}
    config = _folder_config(tmp_path, train_root=flat, val_root=flat)
    assert pipeline.class_names(config) is None and len(pipeline.make_source(config, "val")) == 3
    # Validation in class folders beside unlabeled training images: its labels are not read.
    write_tree(tmp_path / "val", {"apple": 2, "cherry": 1})
    config.folder.val_root = str(tmp_path / "val")
    assert len(pipeline.make_source(config, "val")) == 3
    # A class subset of a folder without classes, and unlabeled validation beside labelled
    # training images, are errors that say what is missing.
    config.classes = ["apple"]
    with pytest.raises(
        ValueError, match=r"data.classes names 1 classes but .*photos.* only 3 image"
    ):
        pipeline.make_source(config, "train")
    config = _folder_config(tmp_path, train_root=tmp_path / "val", val_root=flat)
    with pytest.raises(ValueError, match=r"photos.* no class folders.*val_split_file"):
        pipeline.make_source(config, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no class folders and no image files .*empty"):
        FolderSource(str(tmp_path / "empty"))


def test_folder_pipeline_end_to_end_with_paper_wnids(tmp_path):
    classes = {c.wnid: 2 for c in PAPER_CLASSES} | {"n01443537": 2}
    write_tree(tmp_path / "train", classes)
    write_tree(tmp_path / "val", classes, seed=1)
    config = pipeline.default_data_config()
    config.source = "folder"
    config.image_size = 32
    config.batch_size = 4
    config.classes = [c.wnid for c in PAPER_CLASSES]
    config.folder.train_root = str(tmp_path / "train")
    config.folder.val_root = str(tmp_path / "val")
    config.resize_mode = "shorter_side_crop"
    assert pipeline.num_examples(config, "train") == 10  # the goldfish folder is not selected
    batches = list(pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1))
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    batch = next(pipeline.make_train_iterator(config, seed=0, shard_index=0, shard_count=1))
    assert batch["L"].shape == (4, 32, 32, 1)


def _build_tiny_tfds(data_dir, image_dir):
    """A 3-class tfds dataset in array_record, built from PNG paths (no TensorFlow needed)."""
    import tensorflow_datasets as tfds

    class TinyColors(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(
                            names=["n01443537", "n02643566", "n01751748"]
                        ),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(9, 0),
                "validation": self._generate_examples(4, 100),
            }

        def _generate_examples(self, n, offset):
            for i in range(n):
                path = image_dir / f"img{offset + i}.png"
                colorful(offset + i).save(path)
                yield i, {"image": str(path), "label": i % 3}

    # The class itself, not tfds.builder("tiny_colors") (mtcolor.data.tfds_source.prepare): a
    # caller may define it without registering it (test_data_unlabeled), or define it again with
    # another image_dir. tfds leaves an empty temporary directory for each builder of a dataset
    # not yet prepared: in this test's directory, not /tmp.
    with mock.patch.object(tempfile, "tempdir", str(data_dir.parent)):
        TinyColors(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_colors"


def test_tfds_source_with_class_subset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    name = _build_tiny_tfds(tmp_path / "tfds", image_dir)
    config = pipeline.default_data_config()
    config.source = "tfds"
    config.image_size = 32
    config.batch_size = 2
    config.tfds.name = name
    config.tfds.data_dir = str(tmp_path / "tfds")
    config.tfds.label_cache_dir = str(tmp_path / "cache")
    config.classes = ["lionfish", "n01751748"]  # the paper name maps to its wnid
    assert pipeline.num_examples(config, "train") == 6  # labels 1 and 2 of 9 records
    batches = list(pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1))
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    # Validation records i = 0..3 have labels i % 3 = [0, 1, 2, 0]: kept 1 -> 0 and 2 -> 1. tfds
    # shuffles record order, so match images by label: record i holds colorful(100 + i).
    assert sorted(labels) == [0, 1]
    from skimage import color as skcolor

    for batch in batches:
        for L, label, m in zip(batch["L"], batch["label"], batch["mask"]):  # noqa: N806
            if m:
                image = colorful(100 + 1 + int(label)).resize((32, 32), 3)  # 3 = bicubic
                expected = skcolor.rgb2lab(np.asarray(image))[..., 0] / 50 - 1
                np.testing.assert_allclose(L[..., 0], expected, atol=1e-4)
    assert list((tmp_path / "cache").rglob("*.labels.npy"))
    config.classes = ["goldfish_not_there"]
    with pytest.raises(ValueError, match="goldfish_not_there.*available names: n01443537"):
        pipeline.num_examples(config, "train")
    config.classes = None
    # A dataset that is not there is an error naming the directory and the command that prepares
    # it; tfds is not left to start generating it (download=False), so nothing is written.
    from mtcolor.data.tfds_source import TfdsDatasetNotPreparedError

    before = sorted(p.name for p in (tmp_path / "tfds").iterdir())
    config.tfds.name = "tiny_colors_v2"  # no such dataset
    with pytest.raises(TfdsDatasetNotPreparedError) as error:
        pipeline.num_examples(config, "train")
    where = str(tmp_path / "tfds")
    assert f"'tiny_colors_v2' is not prepared as array_record in {where!r}" in str(error.value)
    assert f"python -m mtcolor.data.tfds_source tiny_colors_v2 --data_dir={where}" in str(
        error.value
    )
    config.tfds.name = "tiny_colors"
    config.tfds.data_dir = str(tmp_path / "empty_tfds")  # registered, not prepared here
    with pytest.raises(TfdsDatasetNotPreparedError, match="'tiny_colors' is not prepared"):
        pipeline.num_examples(config, "train")
    assert sorted(p.name for p in (tmp_path / "tfds").iterdir()) == before
    assert not (tmp_path / "empty_tfds" / "tiny_colors").exists()


def test_prepare_builds_a_registered_dataset_that_the_source_reads(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    from mtcolor.data import tfds_source

    image = tmp_path / "a.png"
    colorful(7).save(image)

    class MtcolorPrepareProbe(tfds.core.GeneratorBasedBuilder):  # registered by its definition
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b"]),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3), "validation": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": str(image), "label": i % 2}

    data_dir = tmp_path / "tfds"
    with mock.patch.object(tempfile, "tempdir", str(tmp_path)):  # tfds's empty temporary directory
        where = tfds_source.prepare("mtcolor_prepare_probe", str(data_dir))
    assert where == str(data_dir / "mtcolor_prepare_probe" / "1.0.0")
    source = tfds_source.TfdsSource("mtcolor_prepare_probe", split="train", data_dir=str(data_dir))
    assert len(source) == 3 and source.class_names == ("a", "b")
    assert MtcolorPrepareProbe.name == "mtcolor_prepare_probe"


def test_preparing_imagenet2012_without_its_tars_says_where_they_go(tmp_path, monkeypatch):
    # The command the not-prepared error names, for the dataset the paper uses: it gets as far as
    # tfds's own check of the manual download (with tensorflow-datasets 4.9.10 that needs
    # importlib_resources, a dependency of this project for that reason) and says where the tars
    # go, in one line, without a traceback.
    pytest.importorskip("tensorflow_datasets")
    from entry_points import run_module

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where tfds leaves an empty directory
    (tmp_path / "tmp").mkdir()
    proc = run_module("mtcolor.data.tfds_source", "imagenet2012", f"--data_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    manual = tmp_path / "downloads" / "manual"
    assert f"error: imagenet2012: Manual directory {manual} does not exist" in proc.stderr
    assert "ILSVRC2012_img_train.tar" in proc.stderr


def test_pipeline_import_pulls_no_tensorflow():
    import subprocess

    # (grain itself imports jax, so only TensorFlow and tensorflow_datasets are checked.)
    code = (
        "import sys, mtcolor.data.pipeline; "
        "print('tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
