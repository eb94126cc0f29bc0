"""The grain pipeline: batches, determinism, resume, flips, sharding, workers, bad files,
filters."""

import multiprocessing
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from skimage import color as skcolor
from test_data_files import bad_files

from mtcolor.data import pipeline, transforms
from mtcolor.data.synthetic import SyntheticSource


def small_config(**overrides):
    c = pipeline.default_data_config()
    c.image_size = 32
    c.batch_size = 4
    c.synthetic.train_size = 12
    c.synthetic.val_size = 10
    c.update_from_flattened_dict(overrides)  # dotted keys, e.g. "synthetic.val_size"
    return c


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("L", "ab", "label"):
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_shapes_dtypes_ranges():
    it = pipeline.make_train_iterator(small_config(), seed=0, shard_index=0, shard_count=1)
    batch = next(it)
    assert batch["L"].shape == (4, 32, 32, 1) and batch["L"].dtype == np.float32
    assert batch["ab"].shape == (4, 32, 32, 2) and batch["ab"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["L"].min() >= -1 and batch["L"].max() <= 1
    assert np.abs(batch["ab"]).max() <= 1 and np.abs(batch["ab"]).max() > 0.2  # colourful data
    assert set(batch["label"]) <= set(range(5))
    assert (
        batch["bad_counts"].shape == (len(pipeline.SKIP_REASONS),) and not batch["bad_counts"].any()
    )
    assert "mask" not in batch


def test_eval_values_are_skimage_lab_of_the_source_images():
    config = small_config()
    batches = list(pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1))
    assert len(batches) == 3  # ceil(10 / 4)
    np.testing.assert_array_equal([b["mask"].sum() for b in batches], [4, 4, 2])
    source = SyntheticSource(split="val", size=32, num_examples=10)
    L = np.concatenate([b["L"] for b in batches])[:10]  # noqa: N806
    ab = np.concatenate([b["ab"] for b in batches])[:10]
    labels = np.concatenate([b["label"] for b in batches])[:10]
    for i in range(10):
        lab = skcolor.rgb2lab(source[i]["rgb"])
        np.testing.assert_allclose(L[i, ..., 0], lab[..., 0] / 50 - 1, atol=1e-4)
        np.testing.assert_allclose(ab[i], lab[..., 1:] / 110, atol=1e-4)
        assert labels[i] == source[i]["label"]
    assert not batches[-1]["L"][2:].any() and batches[-1]["mask"][2:].sum() == 0  # zero padding
    # Every call is a fresh pass.
    again = list(pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1))
    assert_same_batches(batches, again)


def test_same_seed_same_batches_other_seed_different():
    config = small_config()
    a = take(pipeline.make_train_iterator(config, seed=3, shard_index=0, shard_count=1), 4)
    b = take(pipeline.make_train_iterator(config, seed=3, shard_index=0, shard_count=1), 4)
    c = take(pipeline.make_train_iterator(config, seed=4, shard_index=0, shard_count=1), 4)
    assert_same_batches(a, b)
    assert not all(np.array_equal(x["L"], y["L"]) for x, y in zip(a, c))


def _image_ids(batches):
    # Flip-invariant fingerprint of each example: the L image summed over columns keeps rows in
    # order.
    return [tuple(np.round(img[..., 0].sum(1), 3)) for b in batches for img in b["L"]]


def test_epochs_cover_the_set_and_are_reshuffled():
    config = small_config(random_flip=False)
    batches = take(
        pipeline.make_train_iterator(config, seed=0, shard_index=0, shard_count=1), 9
    )  # 3 epochs of 12
    ids = _image_ids(batches)
    epochs = [ids[0:12], ids[12:24], ids[24:36]]
    assert len(set(epochs[0])) == 12
    assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_flip_only_in_training():
    config = small_config(shuffle=False)
    train = take(pipeline.make_train_iterator(config, seed=0, shard_index=0, shard_count=1), 3)
    reference = list(pipeline.make_eval_iterator(config, "train", shard_index=0, shard_count=1))
    flipped = kept = 0
    for t, r in zip(train, reference):
        for i in range(4):
            if np.array_equal(t["ab"][i], r["ab"][i]):
                kept += 1
            else:
                np.testing.assert_array_equal(t["ab"][i], r["ab"][i][:, ::-1])
                np.testing.assert_array_equal(t["L"][i], r["L"][i][:, ::-1])
                flipped += 1
    assert flipped > 0 and kept > 0
    # Evaluation never flips: it equals the source image exactly (checked against skimage above).
    source = SyntheticSource(split="train", size=32, num_examples=12)
    np.testing.assert_allclose(
        reference[0]["L"][1, ..., 0], skcolor.rgb2lab(source[1]["rgb"])[..., 0] / 50 - 1, atol=1e-4
    )


def test_restored_iterator_continues_identically(tmp_path):
    config = small_config()
    it = pipeline.make_train_iterator(config, seed=1, shard_index=0, shard_count=1)
    take(it, 5)  # into the second epoch
    state = it.get_state()
    expected = take(it, 4)
    fresh = pipeline.make_train_iterator(config, seed=1, shard_index=0, shard_count=1)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 4), expected)

    # Through orbax, as the training checkpoint stores it.
    it = pipeline.make_train_iterator(config, seed=1, shard_index=0, shard_count=1)
    take(it, 5)
    checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    checkpointer.save(tmp_path / "ckpt", args=grain.checkpoint.CheckpointSave(it))
    expected = take(it, 4)
    restored = pipeline.make_train_iterator(config, seed=1, shard_index=0, shard_count=1)
    checkpointer.restore(tmp_path / "ckpt", args=grain.checkpoint.CheckpointRestore(restored))
    assert_same_batches(take(restored, 4), expected)


def test_sharding_splits_the_global_batch_disjointly():
    config = small_config(random_flip=False, batch_size=4)
    full = take(pipeline.make_train_iterator(config, seed=2, shard_index=0, shard_count=1), 3)
    shards = [
        take(pipeline.make_train_iterator(config, seed=2, shard_index=i, shard_count=2), 3)
        for i in range(2)
    ]
    assert shards[0][0]["L"].shape[0] == 2
    ids0, ids1 = set(_image_ids(shards[0])), set(_image_ids(shards[1]))
    assert not ids0 & ids1
    assert ids0 | ids1 == set(_image_ids(full))
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_train_iterator(
            small_config(batch_size=3), seed=0, shard_index=0, shard_count=2
        )


def test_each_process_reads_its_own_rows_of_every_global_batch():
    """The pipeline of process p of 2 yields rows [2p, 2p+2) of the one-process batch: disjoint
    halves, flips included, over more than one epoch; evaluation's padding included."""
    from experiments.configs import tiny

    config = tiny.get_config()
    config.data.synthetic.val_size = 7  # the last global batch: 3 rows, process 1 has 1 pad
    one = pipeline.make_train_iterator(config.data, seed=0, shard_index=0, shard_count=1)
    halves = [
        pipeline.make_train_iterator(config.data, seed=0, shard_index=p, shard_count=2)
        for p in (0, 1)
    ]
    for _ in range(2 * 3 + 1):  # 3 steps per epoch
        whole, parts = next(one), [next(h) for h in halves]
        seen = [{x.tobytes() for x in part["L"]} for part in parts]
        assert not seen[0] & seen[1] and all(len(s) == 2 for s in seen)
        for key in ("L", "ab", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    whole = list(pipeline.make_eval_iterator(config.data, shard_index=0, shard_count=1))
    parts = [
        list(pipeline.make_eval_iterator(config.data, shard_index=p, shard_count=2)) for p in (0, 1)
    ]
    assert [len(p) for p in parts] == [2, 2]
    for i, batch in enumerate(whole):
        for key in ("L", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), batch[key])
    assert whole[1]["mask"].tolist() == [1, 1, 1, 0]


def test_a_position_resumes_on_another_process_count():
    """A position saved by process 0 of 2 after 4 batches resumes one process at global batch 5,
    and a one-process position resumes process 1 of 2 at its rows of batch 5."""
    from experiments.configs import tiny

    config = tiny.get_config()

    def train(index, count):
        return pipeline.make_train_iterator(
            config.data, seed=0, shard_index=index, shard_count=count
        )

    uninterrupted = take(train(0, 1), 6)
    half = train(0, 2)
    take(half, 4)
    one = train(0, 1)
    one.set_state(half.get_state())
    assert_same_batches(take(one, 2), uninterrupted[4:])
    whole = train(0, 1)
    take(whole, 4)
    second_half = train(1, 2)
    second_half.set_state(whole.get_state())
    np.testing.assert_array_equal(next(second_half)["L"], uninterrupted[4]["L"][2:])
    assert second_half.get_state()["taken"] == [5 * 2]


def test_sharded_eval_pads_to_the_same_number_of_batches():
    config = small_config(batch_size=4, **{"synthetic.val_size": 9})
    per_shard = [
        list(pipeline.make_eval_iterator(config, "val", shard_index=i, shard_count=2))
        for i in range(2)
    ]
    # 9 examples: shards of 5 and 4, 2 per process per batch -> 3 batches each.
    assert [len(p) for p in per_shard] == [3, 3]
    assert sum(b["mask"].sum() for p in per_shard for b in p) == 9


def test_workers_give_the_same_batches_as_in_process():
    config = small_config()
    expected = take(pipeline.make_train_iterator(config, seed=5, shard_index=0, shard_count=1), 4)
    config.worker_count = 2
    it = pipeline.make_train_iterator(config, seed=5, shard_index=0, shard_count=1)
    try:
        first_two = take(it, 2)
        at_two = it.get_state()
        assert_same_batches(first_two + take(it, 2), expected)
        # Moving a running iterator back replaces its streams; their 2 worker processes must end,
        # not run on beside the 2 new ones. (set_state closes them; under CPython dropping the
        # last reference would too, so this checks the outcome, not which of the two did it.)
        it.set_state(at_two)
        assert_same_batches(take(it, 2), expected[2:])
        deadline = time.monotonic() + 20
        while len(multiprocessing.active_children()) > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(multiprocessing.active_children()) == 2
    finally:
        it.close()


def test_bad_files_are_skipped_and_counted_through_a_worker(tree_with_bad_files):
    config = small_config(source="folder", worker_count=1, max_bad_fraction=None)
    config.folder.train_root = str(tree_with_bad_files)
    config.folder.val_root = str(tree_with_bad_files)
    it = pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1)
    tracker = pipeline.BadInputTracker()
    batches = [tracker.observe(b) for b in it]
    assert all(set(b) == {"L", "ab", "label", "has_label", "mask"} for b in batches)
    assert sum(b["mask"].sum() for b in batches) == 12
    expected = {r: 1 for r in bad_files()} | {"unreadable": 1}
    assert tracker.totals() == expected
    assert tracker.num_bad == 7 and tracker.num_good == 12
    assert any(
        "bad_truncated.JPEG" in line for lines in tracker.examples.values() for line in lines
    )
    assert "truncated" in tracker.report()
    scalars = tracker.scalars()
    assert scalars["data/skipped_zero_byte"] == 1 and scalars["data/good_examples"] == 12
    assert scalars["data/skipped"] == 7
    # Only the reasons seen get a series (no near_grayscale here).
    assert {k for k in scalars if k.startswith("data/skipped_")} == {
        f"data/skipped_{r}" for r in expected
    }
    # 19 files listed, 3 batches of 4 good ones + padding; labels from folder order.
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert sorted(labels) == [0] * 6 + [1] * 6


def test_too_many_bad_files_stop_training_naming_files(tree_with_bad_files):
    config = small_config(source="folder", max_bad_fraction=0.1, bad_check_min_examples=5)
    config.folder.train_root = str(tree_with_bad_files)
    it = pipeline.make_train_iterator(config, seed=0, shard_index=0, shard_count=1)
    with pytest.raises(pipeline.TooManyBadInputsError, match=r"bad_\w+\.JPEG|unreadable\.JPEG"):
        take(it, 10)
    # Under the minimum count the ceiling does not apply yet.
    tracker = pipeline.BadInputTracker(max_bad_fraction=0.1, min_examples=100)
    tracker.update(
        np.eye(len(pipeline.SKIP_REASONS), dtype=int)[0] * 15, 10, ["zero_byte: a.JPEG"]
    )  # 60% of 25
    with pytest.raises(pipeline.TooManyBadInputsError, match="a.JPEG"):
        tracker.update(np.zeros(len(pipeline.SKIP_REASONS)), 85)  # 15 of 110 > 10%


def test_grayscale_filter_drops_gray_photos_from_training_only(tree_with_gray_photos):
    root = tree_with_gray_photos
    config = small_config(
        source="folder", grayscale_filter_threshold=3.0, batch_size=2, shuffle=False
    )
    config.folder.train_root = str(root)
    config.folder.val_root = str(root)
    it = pipeline.make_train_iterator(config, seed=0, shard_index=0, shard_count=1)
    tracker = pipeline.BadInputTracker()
    for _ in range(3):  # one epoch: 2 gray files (listed first) skipped, 6 colour images
        tracker.observe(next(it))
    assert tracker.totals() == {"near_grayscale": 2}
    assert tracker.num_bad == 0  # a filter, not an error
    evaluation = pipeline.BadInputTracker()
    for b in pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1):
        evaluation.observe(b)
    assert evaluation.totals() == {} and evaluation.num_good == 8


def test_mean_chroma_against_hand_computed_values():
    ab = np.zeros((4, 4, 2), np.float32)
    ab[..., 0] = 3 / 110
    ab[..., 1] = 4 / 110
    assert abs(transforms.mean_chroma(ab) - 5.0) < 1e-5


def test_num_examples_and_config_errors(tmp_path):
    config = small_config()
    assert (
        pipeline.num_examples(config, "train") == 12 and pipeline.num_examples(config, "val") == 10
    )
    with pytest.raises(ValueError, match="data.source"):
        pipeline.num_examples(small_config(source="imagenet"), "train")
    missing = small_config(source="folder")
    missing.folder.train_root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pipeline.make_train_iterator(missing, seed=0, shard_index=0, shard_count=1)
    same_root = small_config(source="folder")
    same_root.folder.train_root = str(tmp_path)
    with pytest.raises(ValueError, match="val_root"):
        pipeline.num_examples(same_root, "val")
