"""The device-resident input path (mtcolor.data.resident), checked against the grain pipeline and
skimage: Lab values, flips, epochs, resume, bad files, the cache file, the config switch and a tiny
training run that resumes."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from skimage import color as skcolor
from test_data_files import bad_files, colorful, write_tree

from mtcolor import sharding
from mtcolor.data import decoded_cache, input_paths, pipeline, resident, transforms
from mtcolor.data.synthetic import SyntheticSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _fresh_device_splits():
    resident.clear()
    yield
    resident.clear()


def small_config(tmp_path, **overrides):
    c = pipeline.default_data_config()
    c.image_size = 32
    c.batch_size = 4
    c.synthetic.train_size = 10  # 4 does not divide 10: batches span epochs
    c.synthetic.val_size = 10
    c.read_threads = 1
    c.resident.cache_dir = str(tmp_path / "cache")
    c.update_from_flattened_dict(overrides)  # dotted keys, e.g. "synthetic.val_size"
    return c


def folder_config(tmp_path, root, **overrides):
    c = small_config(tmp_path, source="folder", **overrides)
    c.folder.train_root = str(root)
    c.folder.val_root = str(root)
    return c


def host(batch):
    return {
        k: np.asarray(v) for k, v in batch.items() if k in ("L", "ab", "label", "has_label", "mask")
    }


def take(iterator, n):
    return [host(next(iterator)) for _ in range(n)]


def grain_train(config, seed, n):
    it = pipeline.make_train_iterator(config, seed=seed, shard_index=0, shard_count=1)
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# Values


def test_eval_batches_are_the_grain_paths_and_skimage_lab(tmp_path):
    """Real JPEG decoding (a folder) against the grain evaluation iterator, and the synthetic
    images' Lab against skimage.color.rgb2lab of the source pixels."""
    root = tmp_path / "tree"
    write_tree(root, {"n01": 5, "n02": 4})
    config = folder_config(tmp_path, root)
    ours = [host(b) for b in resident.make_eval_iterator(config, "val")]
    theirs = list(pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1))
    assert len(ours) == len(theirs) == 3  # ceil(9 / 4), the last one padded
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a["L"], b["L"], atol=1e-4)
        np.testing.assert_allclose(a["ab"], b["ab"], atol=1e-4)
        for key in ("label", "mask", "has_label"):
            np.testing.assert_array_equal(a[key], b[key])
    assert not ours[-1]["L"][1:].any() and not ours[-1]["ab"][1:].any()  # zero padding

    config = small_config(tmp_path)
    batches = [host(b) for b in resident.make_eval_iterator(config, "val")]
    source = SyntheticSource(split="val", size=32, num_examples=10)
    L = np.concatenate([b["L"] for b in batches])  # noqa: N806
    ab = np.concatenate([b["ab"] for b in batches])
    for i in range(10):
        lab = skcolor.rgb2lab(source[i]["rgb"])
        np.testing.assert_allclose(L[i, ..., 0], lab[..., 0] / 50 - 1, atol=1e-4)
        np.testing.assert_allclose(ab[i], lab[..., 1:] / 110, atol=1e-4)
    assert np.abs(ab).max() > 0.2  # colourful data, so the check means something


def test_train_batches_equal_grain_without_shuffle_and_flip_across_epochs(tmp_path):
    # Both paths are then the file order repeated; batch 3 spans the end of epoch 1.
    config = small_config(tmp_path, shuffle=False, random_flip=False)
    it = resident.make_train_iterator(config, seed=0)
    first = next(it)
    assert set(first) == {"L", "ab", "label", "has_label", "bad_counts", "bad_examples"}
    expected = jax.tree.map(
        np.asarray,
        sharding.put_batch(
            {
                k: v
                for k, v in grain_train(config, 0, 1)[0].items()
                if k in ("L", "ab", "label", "has_label")
            },
            sharding.make_mesh(),
        ),
    )
    for key, value in expected.items():  # same keys, shapes, dtypes and sharding as put_batch's
        assert first[key].shape == value.shape and first[key].dtype == value.dtype
        assert first[key].sharding.is_equivalent_to(
            sharding.batch_sharded(sharding.make_mesh()), value.ndim
        )
    ours = [host(first)] + take(it, 5)
    for a, b in zip(ours, grain_train(config, 0, 6)):
        np.testing.assert_allclose(a["L"], b["L"], atol=1e-4)
        np.testing.assert_allclose(a["ab"], b["ab"], atol=1e-4)
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["has_label"], np.ones(4, np.float32))


def _fingerprints(batches):
    # Flip-invariant identity of each example: its L image summed over columns.
    return [tuple(np.round(img[..., 0].sum(1), 3)) for b in batches for img in b["L"]]


def test_epochs_are_permutations_reshuffled_each_epoch_and_seeded(tmp_path):
    config = small_config(tmp_path, **{"synthetic.train_size": 12})
    reference = set(_fingerprints(host(b) for b in resident.make_eval_iterator(config, "train")))
    batches = take(resident.make_train_iterator(config, seed=3), 9)  # 3 epochs of 12
    ids = _fingerprints(batches)
    epochs = [ids[0:12], ids[12:24], ids[24:36]]
    assert all(sorted(e) == sorted(reference) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = take(resident.make_train_iterator(config, seed=3), 9)
    other = take(resident.make_train_iterator(config, seed=4), 9)
    assert all(np.array_equal(a["L"], b["L"]) for a, b in zip(batches, again))
    assert not all(np.array_equal(a["L"], b["L"]) for a, b in zip(batches, other))


def test_flips_are_horizontal_mirror_images_of_about_half_the_examples(tmp_path):
    config = small_config(tmp_path, shuffle=False)
    reference = [host(b) for b in resident.make_eval_iterator(config, "train")]
    ref_L = np.concatenate([b["L"] for b in reference])[:10]  # noqa: N806
    ref_ab = np.concatenate([b["ab"] for b in reference])[:10]
    flipped = kept = 0
    # The training and evaluation batches are two compiled programs, which may round the Lab
    # conversion differently (1 ulp, measured); a mirror image differs from the original by 0.1-1.
    for k, batch in enumerate(take(resident.make_train_iterator(config, seed=0), 20)):  # 8 epochs
        for row in range(4):
            i = (4 * k + row) % 10  # file order (shuffle off)
            if np.allclose(batch["L"][row], ref_L[i], rtol=0, atol=1e-6) and np.allclose(
                batch["ab"][row], ref_ab[i], rtol=0, atol=1e-6
            ):
                kept += 1
            else:
                np.testing.assert_allclose(batch["L"][row], ref_L[i][:, ::-1], rtol=0, atol=1e-6)
                np.testing.assert_allclose(batch["ab"][row], ref_ab[i][:, ::-1], rtol=0, atol=1e-6)
                flipped += 1
    assert flipped + kept == 80 and 20 <= flipped <= 60  # Binomial(80, 1/2): 6 sd either way
    # The draws themselves over many (epoch, position) pairs: p = 1/2, not tied to the position.
    key = jax.random.key(0)
    epochs, positions = np.repeat(np.arange(40), 500), np.tile(np.arange(500), 40)
    draws = np.asarray(resident.flip_draws(key, epochs, positions)).reshape(40, 500)
    assert abs(draws.mean() - 0.5) < 0.01  # sd 0.0025
    assert not np.array_equal(draws[0], draws[1])


# ----------------------------------------------------------------------------------------------
# Resume and process count


def test_resume_at_any_step_gives_the_uninterrupted_batches(tmp_path):
    config = small_config(tmp_path)
    uninterrupted = take(resident.make_train_iterator(config, seed=1), 12)
    for k in (0, 1, 5, 7):  # 7: in the middle of epoch 3, inside a batch that spans two epochs
        it = resident.make_train_iterator(config, seed=1)
        take(it, k)
        state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
        fresh = resident.make_train_iterator(config, seed=1)
        fresh.set_state(state)
        for a, b in zip(take(fresh, 12 - k), uninterrupted[k:]):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    assert (state["epoch"], state["index"]) == (2, 8)  # 7 batches of 4 = 28 = 2 epochs of 10 + 8
    with pytest.raises(ValueError, match="not written by the resident"):
        fresh.set_state({"parent": {}})  # a grain iterator's state


# ----------------------------------------------------------------------------------------------
# Bad files and the cache file


def test_bad_files_are_skipped_and_counted_as_the_grain_path_counts_them(
    tmp_path, tree_with_bad_files
):
    config = folder_config(tmp_path, tree_with_bad_files, max_bad_fraction=None)
    cached, built = decoded_cache.load_or_build_cache(config, "train")
    assert built and len(cached.rgb) == 12 and cached.num_files == 19
    grain_tracker = pipeline.BadInputTracker()
    for batch in pipeline.make_eval_iterator(config, "train", shard_index=0, shard_count=1):
        grain_tracker.observe(batch)
    expected = {r: 1 for r in bad_files()} | {"unreadable": 1}
    assert grain_tracker.totals() == expected  # the reference
    assert sorted(s[0] for s in cached.skipped) == sorted(expected)

    # Training: the batch that starts an epoch reports that epoch's skipped files, as grain's do.
    tracker = pipeline.BadInputTracker()
    it = resident.make_train_iterator(config, seed=0)
    for _ in range(3):  # exactly one epoch of 12
        tracker.observe(next(it))
    assert tracker.totals() == expected and tracker.num_good == 12
    assert tracker.scalars()["data/skipped_truncated"] == 1
    assert "bad_truncated.JPEG" in tracker.report()
    tracker.observe(next(it))  # the second epoch counts them again, like grain's repeated stream
    assert tracker.totals() == {r: 2 for r in expected}
    evaluation = pipeline.BadInputTracker()
    for batch in resident.make_eval_iterator(config, "train"):
        evaluation.observe(batch)
    assert evaluation.totals() == expected and evaluation.num_good == 12

    # max_bad_fraction is enforced while building: 7 of 19 files > 10%.
    resident.clear()
    strict = folder_config(
        tmp_path / "strict", tree_with_bad_files, max_bad_fraction=0.1, bad_check_min_examples=5
    )
    with pytest.raises(pipeline.TooManyBadInputsError, match=r"bad_\w+\.JPEG|unreadable\.JPEG"):
        decoded_cache.load_or_build_cache(strict, "train")
    assert not (tmp_path / "strict" / "cache").exists()  # nothing written


def test_grayscale_filter_drops_gray_training_images_and_counts_them(
    tmp_path, tree_with_gray_photos
):
    root = tree_with_gray_photos
    config = folder_config(tmp_path, root, grayscale_filter_threshold=3.0, batch_size=2)
    assert resident.steps_per_epoch(config) == 3  # the 6 colour images
    it = resident.make_train_iterator(config, seed=0)
    tracker = pipeline.BadInputTracker()
    epoch = [host(tracker.observe(next(it))) for _ in range(3)]
    assert (
        tracker.totals() == {"near_grayscale": 2} and tracker.num_bad == 0
    )  # a filter, not an error
    assert "gray0.JPEG" in tracker.report()
    assert len(set(_fingerprints(epoch))) == 6
    chroma = [np.sqrt(np.square(110 * ab).sum(-1)).mean() for b in epoch for ab in b["ab"]]
    assert min(chroma) > 3.0
    evaluation = [host(b) for b in resident.make_eval_iterator(config, "train")]
    assert sum(b["mask"].sum() for b in evaluation) == 8  # evaluation keeps them


def test_cache_is_reused_without_decoding_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    paths = write_tree(root, {"n01": 3, "n02": 3})
    config = folder_config(tmp_path, root)
    first, built = decoded_cache.load_or_build_cache(config, "train")
    assert built and os.path.dirname(first.path) == str(tmp_path / "cache")
    mtime = os.stat(first.path).st_mtime_ns

    def no_decoding(self, record):
        raise AssertionError("decoded although the cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(transforms.DecodeAndResize, "map", no_decoding)
        second, built = decoded_cache.load_or_build_cache(config, "train")
    assert not built and second.path == first.path and os.stat(first.path).st_mtime_ns == mtime
    np.testing.assert_array_equal(second.rgb, first.rgb)

    colorful(999).save(paths[0], "JPEG")  # new content (and size / mtime)
    os.utime(paths[0], ns=(mtime + 10**9, mtime + 10**9))
    third, built = decoded_cache.load_or_build_cache(config, "train")
    assert built and third.path != first.path
    assert not np.array_equal(third.rgb[0], first.rgb[0]) and np.array_equal(
        third.rgb[1:], first.rgb[1:]
    )
    assert not os.path.exists(first.path)  # the stale cache of this source is gone
    assert not [n for n in os.listdir(tmp_path / "cache") if n.endswith(".tmp")]
    # Another image size is another cache (both kept).
    resized, built = decoded_cache.load_or_build_cache(
        folder_config(tmp_path, root, image_size=64), "train"
    )
    assert built and resized.rgb.shape[1:] == (64, 64, 3) and os.path.exists(third.path)


# ----------------------------------------------------------------------------------------------
# The switch and a training run


def test_config_switch_checks_and_auto_choice(tmp_path):
    from experiments.configs import tiny
    from mtcolor.train import validation

    config = tiny.get_config()
    config.data.input_path = "fast"
    problems = validation.config_problems(config)
    assert problems == [
        "--config.data.input_path='fast': must be one of 'grain', 'auto', 'resident'"
    ]
    config.data.input_path = "resident"
    config.data.unlabeled.source = "synthetic"
    (problem,) = validation.config_problems(config)
    assert problem.startswith("--config.data.input_path='resident': reads labelled data only")

    data = small_config(tmp_path, input_path="auto")
    assert input_paths.choose_input_path(data)[0] == "resident"  # 20 images of 3 KB
    data.resident.max_memory_fraction = 1e-12
    assert input_paths.choose_input_path(data)[0] == "grain"
    assert (
        input_paths.choose_input_path(data, resumed="resident")[0] == "resident"
    )  # follows the run
    data.resident.max_memory_fraction = 0.25
    data.unlabeled.source = "synthetic"
    path, why = input_paths.choose_input_path(data)
    assert path == "grain" and "unlabeled" in why
    assert input_paths.estimated_bytes(small_config(tmp_path)) == 20 * 32 * 32 * 3
    with pytest.raises(ValueError, match="resident"):
        resident.make_train_iterator(data, seed=0)


def test_tiny_training_run_with_resident_input_finishes_and_resumes(tmp_path):
    from experiments.configs import tiny
    from mtcolor.train import checkpointing, loop

    config = tiny.get_config()
    config.data.input_path = "resident"
    config.data.resident.cache_dir = str(tmp_path / "cache")
    # One phase (one train-step compilation, the cost of this test): 3 steps, 2 + 1 over two runs.
    config.train.unfrozen_epochs = 0
    config.train.max_steps_per_run = 2
    workdir = tmp_path / "run"
    first = loop.train_and_evaluate(config, str(workdir))
    assert first["steps"] == 2 and not first["finished"]
    assert checkpointing.saved_input_path(str(workdir)) == "resident"
    summary = loop.train_and_evaluate(config, str(workdir))
    assert summary["steps"] == 3 and summary["finished"] and summary["steps_this_run"] == 1
    assert np.isfinite(summary["final"]["val"]["loss_l1"])
    # 3 steps of 4 from 12 images: the stream is at the start of epoch 1; the bad-input
    # counters (extra) are saved as with grain.
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(checkpointing.checkpoint_dir(str(workdir))) as manager:
        saved = manager.restore(
            3, args=ocp.args.Composite(**{checkpointing.DATA_POSITION: ocp.args.JsonRestore()})
        )[checkpointing.DATA_POSITION]
        assert checkpointing.restore_extra(manager, 3) == {"counts": [0] * 8, "good": 12}
    assert (saved["epoch"], saved["index"]) == (1, 0)
    # The other input path cannot resume it, and says so (it is not mistaken for damage).
    config.data.input_path = "grain"
    config.train.unfrozen_epochs += 1
    with pytest.raises(checkpointing.InputPathChangedError, match="input_path=resident"):
        loop.train_and_evaluate(config, str(workdir))
    assert not (workdir / "checkpoints_damaged").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_each_hold_their_contiguous_rows_of_the_same_global_batches(tmp_path):
    """Two CPU processes joined by jax.distributed (as tests/test_multihost.py, without a model):
    process p's rows of every training batch are rows [p B/2, (p+1) B/2) of the one-process
    batch, and evaluation yields each process its rows of the same padded batches."""
    config = small_config(tmp_path)
    train = take(resident.make_train_iterator(config, seed=5), 4)
    evaluation = [host(b) for b in resident.make_eval_iterator(config, "val")]
    script = textwrap.dedent(f"""
        import numpy as np
        from mtcolor.data import pipeline, resident
        from mtcolor import sharding
        sharding.maybe_initialize_distributed()
        import jax
        c = pipeline.default_data_config()
        c.image_size, c.batch_size = 32, 4
        c.synthetic.train_size, c.synthetic.val_size = 10, 10
        c.resident.cache_dir = {str(tmp_path / "cache")!r}
        it = resident.make_train_iterator(c, seed=5)
        rows = [resident.process_rows(next(it)) for _ in range(4)]
        ev = list(resident.make_eval_iterator(c, "val"))
        p = jax.process_index()
        np.save({str(tmp_path)!r} + f"/train{{p}}.npy", np.stack([r["L"] for r in rows]))
        np.save({str(tmp_path)!r} + f"/eval{{p}}.npy", np.stack([e["ab"] for e in ev]))
        np.save({str(tmp_path)!r} + f"/mask{{p}}.npy", np.stack([e["mask"] for e in ev]))
    """)
    port = _free_port()
    procs = []
    for process_id in (0, 1):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for p in range(2):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"train{p}.npy"),
            np.stack([b["L"][2 * p : 2 * p + 2] for b in train]),
        )
        np.testing.assert_array_equal(
            np.load(tmp_path / f"eval{p}.npy"),
            np.stack([b["ab"][2 * p : 2 * p + 2] for b in evaluation]),
        )
        np.testing.assert_array_equal(
            np.load(tmp_path / f"mask{p}.npy"),
            np.stack([b["mask"][2 * p : 2 * p + 2] for b in evaluation]),
        )
    # One process computes the same slices from a global batch (non-array fields pass unchanged).
    batch = next(resident.make_train_iterator(config, seed=5))
    half = resident.process_rows(batch, 1, 2)
    np.testing.assert_array_equal(half["L"], train[0]["L"][2:])
    assert half["bad_examples"] == batch["bad_examples"]
