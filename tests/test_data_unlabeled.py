"""data.unlabeled: a second, unlabeled source mixed into every training batch (paper section V-B).

The labelled data are colourful noise images in class folders; the unlabeled data are a flat
folder of SOLID colours, one distinct green per image, so every unlabeled row can be told apart
from labelled rows (constant ab) and identified (which green it is).
"""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from skimage import color as skcolor
from test_data_files import bad_files, colorful, write_tree

from mtcolor.data import pipeline
from mtcolor.data.folder import ImageFilesSource

NUM_UNLABELED = 10


def solid_rgb(k: int) -> tuple[int, int, int]:
    """The colour of unlabeled image k: a distinct green per k."""
    return (10 + 12 * k, 190, 30)


def solid_ab(k: int) -> np.ndarray:
    """The normalized ab (ab/110) of solid_rgb(k), by skimage."""
    lab = skcolor.rgb2lab(np.array([[solid_rgb(k)]], np.uint8))[0, 0]
    return (lab[1:] / 110).astype(np.float32)


def write_solid_folder(root, count: int = NUM_UNLABELED):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new("RGB", (40, 36), solid_rgb(k)).save(root / f"photo{k:02d}.png")
    return root


@pytest.fixture()
def roots(tmp_path):
    write_tree(tmp_path / "train", {"n01": 6, "n02": 6})  # 12 labelled images
    write_tree(tmp_path / "val", {"n01": 2, "n02": 3}, seed=1)
    write_solid_folder(tmp_path / "photos")  # no class subfolders
    return tmp_path


def config_for(roots, *, fraction=0.5, batch_size=8, **overrides):
    c = pipeline.default_data_config()
    c.image_size = 32
    c.batch_size = batch_size
    c.worker_count = 0
    c.source = "folder"
    c.folder.train_root = str(roots / "train")
    c.folder.val_root = str(roots / "val")
    c.unlabeled.source = "folder"
    c.unlabeled.folder.root = str(roots / "photos")
    c.unlabeled.fraction = fraction
    c.update_from_flattened_dict(overrides)  # dotted keys, e.g. "synthetic.val_size"
    return c


def train_iter(config, *, seed=0, shard_index=0, shard_count=1):
    return pipeline.make_train_iterator(
        config, seed=seed, shard_index=shard_index, shard_count=shard_count
    )


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def unlabeled_id(ab: np.ndarray) -> int | None:
    """Which solid green an (H, W, 2) ab image is, or None if it is not one of them."""
    if np.ptp(ab, axis=(0, 1)).max() > 1e-3:
        return None
    for k in range(NUM_UNLABELED):
        if np.abs(ab[0, 0] - solid_ab(k)).max() < 2e-3:
            return k
    return None


def labelled_id(L: np.ndarray) -> tuple:  # noqa: N803
    # Flip-invariant fingerprint: each row's sum (rows keep their order under a horizontal flip).
    return tuple(np.round(L[..., 0].sum(1), 3))


def row_ids(batch) -> tuple[list, list]:
    """(labelled fingerprints, unlabeled ids) of one batch, by has_label."""
    rows = np.flatnonzero(batch["has_label"] == 1)
    others = np.flatnonzero(batch["has_label"] == 0)
    return [labelled_id(batch["L"][i]) for i in rows], [
        unlabeled_id(batch["ab"][i]) for i in others
    ]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("L", "ab", "label", "has_label", "bad_counts"):
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("fraction, expected", [(0.25, 2), (0.5, 4), (0.75, 6)])
def test_fraction_is_exact_and_has_label_marks_the_unlabeled_rows(roots, fraction, expected):
    config = config_for(roots, fraction=fraction)
    assert pipeline.unlabeled_per_batch(config) == expected
    assert pipeline.labelled_per_batch(config) == 8 - expected
    for batch in take(train_iter(config), 6):
        has_label = batch["has_label"]
        assert has_label.shape == (8,) and has_label.dtype == np.float32
        assert set(np.unique(has_label)) <= {0.0, 1.0}
        assert int((has_label == 0).sum()) == expected  # every batch, exactly
        for i in range(8):
            from_second_folder = unlabeled_id(batch["ab"][i]) is not None
            assert from_second_folder == (has_label[i] == 0)
        assert not batch["label"][has_label == 0].any()  # label 0 on unlabeled rows
        assert set(batch["label"][has_label == 1]) <= {0, 1}
        assert batch["L"].shape == (8, 32, 32, 1) and not batch["bad_counts"].any()


def test_unlabeled_images_come_from_the_second_folder_and_cycle_reshuffled(roots):
    config = config_for(roots, fraction=0.25)  # 2 unlabeled, 6 labelled rows per batch
    batches = take(train_iter(config), 10)  # 2 passes over the 10 unlabeled images, 5 labelled
    ids = [k for b in batches for k in row_ids(b)[1]]
    assert None not in ids
    first, second = ids[:10], ids[10:]
    assert sorted(first) == sorted(second) == list(range(NUM_UNLABELED))
    assert first != second  # reshuffled independently of the labelled epochs
    for b in batches:  # the values are the Lab of the files (skimage), not just some constant
        for i in np.flatnonzero(b["has_label"] == 0):
            np.testing.assert_allclose(
                b["ab"][i],
                np.broadcast_to(solid_ab(unlabeled_id(b["ab"][i])), (32, 32, 2)),
                atol=1e-4,
            )
    # Epochs are counted in labelled examples: 12 labelled files, 6 per batch.
    assert pipeline.steps_per_epoch(config) == 2
    labelled = [x for b in batches[:2] for x in row_ids(b)[0]]
    assert len(set(labelled)) == 12


def test_has_label_is_all_ones_without_unlabeled_data_and_in_evaluation(roots):
    config = config_for(roots, **{"unlabeled.source": None})
    assert pipeline.unlabeled_per_batch(config) == 0 and pipeline.steps_per_epoch(config) == 1
    batch = next(train_iter(config))
    np.testing.assert_array_equal(batch["has_label"], np.ones(8, np.float32))
    assert batch["has_label"].dtype == np.float32
    mixed = config_for(roots)
    evaluation = list(pipeline.make_eval_iterator(mixed, "val", shard_index=0, shard_count=1))
    assert (
        len(evaluation) == 1 and evaluation[0]["mask"].sum() == 5
    )  # the unlabeled set is not read
    np.testing.assert_array_equal(evaluation[0]["has_label"], np.ones(8, np.float32))
    assert all(unlabeled_id(ab) is None for ab in evaluation[0]["ab"][:5])


def test_same_seed_same_batches_other_seed_different(roots):
    config = config_for(roots)
    a = take(train_iter(config, seed=7), 4)
    b = take(train_iter(config, seed=7), 4)
    assert_same_batches(a, b)
    c = take(train_iter(config, seed=8), 4)
    assert [row_ids(x)[1] for x in a] != [row_ids(x)[1] for x in c]


def test_restored_iterator_continues_both_streams_identically(roots, tmp_path):
    config = config_for(roots, fraction=0.25)
    it = train_iter(config, seed=1)
    take(it, 3)  # mid-run: 18 labelled rows (2nd epoch of 12), 6 of the 10 unlabeled ones
    state = it.get_state()
    assert state["taken"] == [18, 6]  # rows read from the labelled and the unlabeled stream
    expected = take(it, 5)
    fresh = train_iter(config, seed=1)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 5), expected)

    # Through orbax and grain's checkpoint handler, as the training checkpoint stores it.
    it = train_iter(config, seed=1)
    take(it, 3)
    checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    checkpointer.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
    expected = take(it, 5)
    restored = train_iter(config, seed=1)
    checkpointer.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(restored))
    assert_same_batches(take(restored, 5), expected)

    # A state of the other kind of pipeline is refused, not half-restored.
    labelled_only = train_iter(config_for(roots, **{"unlabeled.source": None}), seed=1)
    with pytest.raises(ValueError, match="unlabeled"):
        labelled_only.set_state(state)


def test_worker_processes_give_the_same_batches(roots):
    # The one slow test (~10 s: two spawned workers, one per stream): both streams are reassembled
    # in index order, so worker_count does not change a batch, bad-file counts included.
    (roots / "photos" / "bad.png").write_bytes(bad_files()["truncated"])
    config = config_for(roots, fraction=0.25)
    expected = take(train_iter(config, seed=5), 4)
    config.worker_count = 1
    it = train_iter(config, seed=5)
    try:
        assert_same_batches(take(it, 4), expected)
    finally:
        it.close()
    assert sum(b["bad_counts"].sum() for b in expected) >= 1


def test_two_shards_are_disjoint_and_cover_the_global_batch(roots):
    config = config_for(roots, fraction=0.5, random_flip=False)  # 4 + 4 rows, 2 + 2 per process
    full = take(train_iter(config, seed=2), 3)
    shards = [take(train_iter(config, seed=2, shard_index=i, shard_count=2), 3) for i in range(2)]
    for step in range(3):
        parts = [row_ids(shards[i][step]) for i in range(2)]
        assert all(len(lab) == 2 and len(unl) == 2 for lab, unl in parts)
        np.testing.assert_array_equal(shards[0][step]["has_label"], [1, 1, 0, 0])
        labelled = [set(p[0]) for p in parts]
        unlabeled = [set(p[1]) for p in parts]
        assert not labelled[0] & labelled[1] and not unlabeled[0] & unlabeled[1]
        full_labelled, full_unlabeled = row_ids(full[step])
        assert labelled[0] | labelled[1] == set(full_labelled)
        assert unlabeled[0] | unlabeled[1] == set(full_unlabeled)
    # Each process needs a whole share of the unlabeled rows.
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        train_iter(config_for(roots, fraction=0.25), shard_index=0, shard_count=4)


def test_bad_files_in_the_unlabeled_folder_are_counted_not_fatal(roots):
    photos = roots / "photos"
    for reason, data in bad_files().items():  # "bad_*" sorts before "photo*": read first
        (photos / f"bad_{reason}.png").write_bytes(data)
    (photos / "readme.txt").write_text("not listed")
    config = config_for(roots, fraction=0.25, shuffle=False)  # default max_bad_fraction
    it = train_iter(config)
    tracker = pipeline.BadInputTracker()
    batches = [tracker.observe(next(it)) for _ in range(5)]  # exactly one unlabeled pass: 10 good
    assert tracker.totals() == {reason: 1 for reason in bad_files()}
    assert tracker.num_good == 40
    lines = [line for kept in tracker.examples.values() for line in kept]
    assert any("photos/bad_truncated.png" in line for line in lines)
    assert sorted(k for b in batches for k in row_ids(b)[1]) == list(range(NUM_UNLABELED))


def test_grayscale_photos_in_the_unlabeled_folder_are_dropped_by_default(roots):
    assert pipeline.default_data_config().unlabeled.grayscale_threshold == 2.0
    assert pipeline.default_data_config().grayscale_filter_threshold is None
    for i in range(2):  # grayscale photos stored as RGB, in both sources
        gray = colorful(70 + i).convert("L").convert("RGB")
        gray.save(roots / "photos" / f"gray{i}.png")
        gray.save(roots / "train" / "n01" / f"gray{i}.JPEG")
    config = config_for(roots, fraction=0.5, shuffle=False)
    it = train_iter(config)
    tracker = pipeline.BadInputTracker()
    batches = [tracker.observe(next(it)) for _ in range(5)]  # 20 unlabeled rows: 2 passes over 10
    assert tracker.totals() == {"near_grayscale": 4}  # 2 files x 2 passes; not errors
    assert tracker.num_bad == 0
    assert all(k is not None for b in batches for k in row_ids(b)[1])  # no gray unlabeled row
    # The labelled stream keeps its own setting (off by default): its gray photos are batched.
    gray_labelled = [
        i
        for b in batches
        for i in np.flatnonzero(b["has_label"] == 1)
        if np.abs(b["ab"][i]).max() < 1e-2
    ]
    assert gray_labelled

    # None turns the unlabeled filter off.
    config.unlabeled.grayscale_threshold = None
    it = train_iter(config)
    ids = [k for b in take(it, 3) for k in row_ids(b)[1]]
    assert ids.count(None) == 2 and not any(next(it)["bad_counts"])


def test_an_unlabeled_folder_of_only_gray_photos_stops_with_an_error(roots, tmp_path):
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        colorful(80 + i).convert("L").convert("RGB").save(gray / f"g{i}.png")
    config = config_for(roots, **{"unlabeled.folder.root": str(gray)})
    with pytest.raises(
        pipeline.TooManyBadInputsError, match="unlabeled training stream.*near_grayscale"
    ):
        next(train_iter(config))


def test_image_files_source_lists_nested_and_flat_folders_without_labels(tmp_path):
    root = tmp_path / "photos"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    colorful(0).save(root / "top.jpg")
    colorful(1).save(root / "a" / "x.PNG")
    colorful(2).save(root / "a" / "deeper" / "y.jpeg")
    colorful(3).save(root / ".hidden" / "z.jpg")
    colorful(4).save(root / ".dotfile.jpg")
    (root / "a" / "notes.txt").write_text("not an image extension")
    source = ImageFilesSource(str(root))
    rel = [p[len(str(root)) + 1 :] for p in source.paths]
    assert rel == ["a/deeper/y.jpeg", "a/x.PNG", "top.jpg"]
    assert [source[i]["label"] for i in range(3)] == [0, 0, 0]
    listing = tmp_path / "some.txt"
    listing.write_text("# a subset\ntop.jpg\na/x.PNG n01\n")
    assert len(ImageFilesSource(str(root), split_file=str(listing))) == 2
    (tmp_path / "no_images" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFilesSource(str(tmp_path / "no_images"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFilesSource(str(tmp_path / "missing"))


def test_synthetic_unlabeled_images_differ_from_the_labelled_ones():
    c = pipeline.default_data_config()
    c.image_size = 32
    c.batch_size = 4
    c.synthetic.train_size = 8
    c.unlabeled.source = "synthetic"
    c.unlabeled.synthetic.size = 6
    c.unlabeled.grayscale_threshold = None
    assert pipeline.num_examples(c, "unlabeled") == 6
    batches = take(train_iter(c), 6)  # 12 labelled rows (8 images), 12 unlabeled (6 images)
    labelled = {labelled_id(b["L"][i]) for b in batches for i in np.flatnonzero(b["has_label"])}
    unlabeled = {
        labelled_id(b["L"][i]) for b in batches for i in np.flatnonzero(b["has_label"] == 0)
    }
    assert len(labelled) == 8 and len(unlabeled) == 6 and not labelled & unlabeled
    assert not np.concatenate([b["label"][2:] for b in batches]).any()


def test_config_errors_name_the_option(roots):
    for fraction in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match="unlabeled.fraction"):
            train_iter(config_for(roots, fraction=fraction))
    with pytest.raises(ValueError, match="unlabeled.source"):
        train_iter(config_for(roots, **{"unlabeled.source": "imagenet"}))
    with pytest.raises(ValueError, match="unlabeled.folder.root"):
        train_iter(config_for(roots, **{"unlabeled.folder.root": ""}))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_iter(config_for(roots, **{"unlabeled.folder.root": str(roots / "nowhere")}))
    with pytest.raises(ValueError, match="evaluation split"):
        pipeline.make_eval_iterator(config_for(roots), "unlabeled", shard_index=0, shard_count=1)


def test_tfds_split_as_unlabeled_source(tmp_path, roots):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    from test_data_sources import _build_tiny_tfds

    image_dir = tmp_path / "tfds_images"
    image_dir.mkdir()
    # Not registered: test_data_sources registers the builder's name in this same process.
    with tfds.core.registered.skip_registration():
        name = _build_tiny_tfds(tmp_path / "tfds", image_dir)
    config = config_for(roots, fraction=0.5, **{"unlabeled.source": "tfds"})
    config.unlabeled.tfds.name = name
    config.unlabeled.tfds.data_dir = str(tmp_path / "tfds")
    config.unlabeled.tfds.split = "train"
    assert pipeline.num_examples(config, "unlabeled") == 9
    batch = next(train_iter(config))
    np.testing.assert_array_equal(batch["has_label"], [1, 1, 1, 1, 0, 0, 0, 0])
    assert not batch["label"][4:].any()
    # The tfds images are colorful(i) for record i: each unlabeled row is one of them.
    expected = [
        skcolor.rgb2lab(np.asarray(colorful(i).resize((32, 32), 3)))[..., 0] / 50 - 1
        for i in range(9)
    ]
    for L in batch["L"][4:]:  # noqa: N806
        assert (
            min(np.abs(L[..., 0] - e).max() for e in expected) < 1e-4
            or min(np.abs(L[:, ::-1, 0] - e).max() for e in expected) < 1e-4
        )
