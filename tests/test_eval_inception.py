"""The FID Inception-v3 against pytorch-fid (golden features), its weights loading and lookup."""

import io
import urllib.error
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixture_scripts import load_benchmark_script

from mtcolor import weights
from mtcolor.eval import frechet, inception

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "inception_golden.npz"


def _fixture_script():
    return load_benchmark_script("make_inception_fixture")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def torch_state_dict(golden):
    """The seeded weights pytorch-fid ran with, in torch's key order and shapes (from the
    fixture)."""
    script = _fixture_script()
    keys = [str(k) for k in golden["keys"]]
    offsets = np.concatenate([[0], np.cumsum(golden["ndims"])])
    shapes = [tuple(golden["shapes_flat"][offsets[i] : offsets[i + 1]]) for i in range(len(keys))]
    state = script.random_state_dict(keys, shapes)
    assert script.weights_checksum(state) == pytest.approx(
        float(golden["weights_checksum"]), rel=1e-12
    )
    return state


@pytest.fixture(scope="module")
def variables(torch_state_dict):
    return inception.convert_fid_inception_state_dict(torch_state_dict)


def test_features_match_pytorch_fid(golden, variables):
    # 40x56 images: exercises the bilinear resize to 299 as well as every block's quirks.
    features = np.asarray(jax.jit(inception.FIDInceptionV3().apply)(variables, golden["images"]))
    reference = golden["features"]
    assert features.shape == reference.shape == (2, inception.FEATURE_DIM)
    assert reference.std() > 1.0  # the random network produces non-trivial features
    relative = np.linalg.norm(features - reference) / np.linalg.norm(reference)
    assert relative < 1e-4, relative


def test_downsampling_resize_matches_pytorch_fid(golden, variables):
    # pytorch-fid shrinks large images with torch's bilinear interpolation, no antialiasing.
    features = np.asarray(
        jax.jit(inception.FIDInceptionV3().apply)(variables, _fixture_script().large_image())
    )
    reference = golden["features_downsampled"]
    relative = np.linalg.norm(features - reference) / np.linalg.norm(reference)
    assert relative < 1e-4, relative


def test_parameter_count_is_the_hand_derived_literal(golden, variables):
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    assert count == inception.FID_INCEPTION_PARAM_COUNT == 21_785_568
    assert int(golden["param_count"]) == 21_785_568  # torch's named_parameters() without fc
    # BN running statistics: 94 BasicConv2d layers, mean and var per channel.
    assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 2 * 94


def test_average_pool_ignores_padding():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    pooled = np.asarray(inception.avg_pool_3x3_valid_only(x))[0, :, :, 0]
    # Corner: mean of its 4 in-image neighbours; edge: 6; centre: 9 (hand-computed).
    assert pooled[0, 0] == pytest.approx((0 + 1 + 3 + 4) / 4)
    assert pooled[0, 1] == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)
    assert pooled[1, 1] == pytest.approx(4.0)


def test_mismatched_state_dict_lists_every_problem(torch_state_dict):
    state = dict(torch_state_dict)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    state["Mixed_5b.branch_pool.conv.weight"] = np.zeros((32, 192, 3, 3), np.float32)
    state["AuxLogits.conv0.conv.weight"] = np.zeros((128, 768, 1, 1), np.float32)
    with pytest.raises(weights.WeightsMismatchError) as info:
        inception.convert_fid_inception_state_dict(state, path="x.pth")
    error = info.value
    assert isinstance(error, inception.FIDWeightsMismatchError)
    assert error.missing == ["Mixed_7c.branch_pool.bn.running_var"]
    assert error.unexpected == ["AuxLogits.conv0.conv.weight"]
    assert error.shape_mismatches == [
        ("Mixed_5b.branch_pool.conv.weight", (32, 192, 3, 3), (32, 192, 1, 1))
    ]
    message = str(error)
    assert message.startswith(
        "FID Inception-v3 weights do not match in x.pth: 1 missing, 1 unexpected"
    )
    assert "Mixed_7c.branch_pool.bn.running_var" in message and "AuxLogits" in message


def test_load_from_file_ignores_fc_and_counters(tmp_path, torch_state_dict, variables):
    path = tmp_path / "pt_inception.npz"
    np.savez(path, **torch_state_dict)  # includes fc.* and num_batches_tracked
    loaded = inception.load_fid_inception(path)
    kernel = loaded["params"]["Mixed_6e"]["branch7x7_2"]["conv"]["kernel"]
    assert kernel.shape == (1, 7, 192, 192)  # torch (192, 192, 1, 7) -> HWIO
    np.testing.assert_array_equal(
        kernel, torch_state_dict["Mixed_6e.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        loaded["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"],
        torch_state_dict["Conv2d_1a_3x3.bn.running_var"],
    )
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)


def test_legacy_torch_format_is_read(tmp_path, golden):
    # pytorch-fid's weights file predates torch's zip format; the shared reader must take both
    # (its refusal of legacy files that run code is tested in tests/test_weights.py).
    path = tmp_path / "legacy.pth"
    path.write_bytes(golden["legacy_pth"].tobytes())
    state = weights.read_state_dict(path)
    expected = {
        k[len("legacy_expected__") :]: v
        for k, v in golden.items()
        if k.startswith("legacy_expected__")
    }
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_weights_lookup_cache_and_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(weights.WeightsNotAvailableError, match="curl -LO .*6726825d"):
        inception.find_fid_inception_weights(download=False)

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    with pytest.raises(weights.WeightsNotAvailableError, match="download from .*failed"):
        inception.find_fid_inception_weights(urlopen=offline)

    class WrongFile(io.BytesIO):
        def __enter__(self):
            return self

    with pytest.raises(ValueError, match="does not start with"):
        inception.find_fid_inception_weights(
            urlopen=lambda url, timeout: WrongFile(b"not the weights")
        )
    cached = tmp_path / "torch" / "hub" / "checkpoints" / inception.FID_WEIGHTS_FILENAME
    assert not cached.exists()  # a failed hash check leaves nothing that looks cached
    cached.write_bytes(b"placeholder")
    assert inception.find_fid_inception_weights(download=False) == cached


def test_evaluate_reports_fid_next_to_the_other_distance(tmp_path, torch_state_dict):
    import flax.linen as nn
    import ml_collections

    from mtcolor import tasks
    from mtcolor.eval import evaluate

    path = tmp_path / "fid.npz"
    np.savez(path, **torch_state_dict)
    # ResNet-18 weights absent (a missing file, so no download is tried): that distance is skipped
    # with a reason, the FID the user asked for is still there.
    config = ml_collections.ConfigDict({"model": {"pretrained": str(tmp_path / "absent.pth")}})
    evaluate.FRECHET_SKIPPED.clear()
    extractors = evaluate.feature_extractors(config, fid_weights=str(path))
    assert [e.metric_name for e in extractors] == ["fid"]
    assert "frechet_resnet18_distance skipped" in evaluate.FRECHET_SKIPPED[-1]
    fid = extractors[0]
    # The 2048-d Frechet distance costs ~15 s of eigh on a 2-core CPU; its maths is tested in
    # test_eval_metrics. Here: real Inception features, the first 64 of them, through
    # evaluate_model.
    fid_64 = frechet.FeatureExtractor("fid", lambda rgb: fid.features(rgb)[:, :64], fid.description)
    mean_rgb = frechet.FeatureExtractor(
        "frechet_test_distance", lambda rgb: rgb.mean(axis=(1, 2)), "test"
    )

    class ReddishColorizer(nn.Module):
        @nn.compact
        def __call__(self, L, train=False):
            return {"colorization": jnp.concatenate([jnp.full_like(L, 0.3), jnp.zeros_like(L)], -1)}

    rng = np.random.default_rng(0)
    batch = {
        "L": rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32),
        "ab": rng.uniform(-0.3, 0.3, (3, 16, 16, 2)).astype(np.float32),
        "label": np.zeros(3, np.int32),
        "mask": np.ones(3, np.float32),
    }
    result = evaluate.evaluate_model(
        ReddishColorizer(),
        {},
        tasks.experiment_tasks("colorization"),
        [batch],
        feature_extractor=[mean_rgb, fid_64],
    )
    assert [entry["metric"] for entry in result["frechet"]] == ["frechet_test_distance", "fid"]
    assert result["ground_truth"]["fid"] == 0.0
    assert result["model"]["fid"] > 0 and result["grayscale_baseline"]["fid"] > 0
    assert result["model"]["fid"] != result["model"]["frechet_test_distance"]
    markdown = evaluate.results_markdown(result)
    assert "| FID |" in markdown and "fid: FID: Inception-v3 pool3" in markdown
    with pytest.raises(ValueError, match="share a metric name"):
        evaluate.evaluate_model(
            ReddishColorizer(),
            {},
            tasks.experiment_tasks("colorization"),
            [batch],
            feature_extractor=[fid_64, fid_64],
        )
