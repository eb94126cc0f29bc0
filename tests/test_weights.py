"""mtcolor.weights: torchvision key mapping, the torch-free .pth reader, and weight resolution."""

import numpy as np
import pytest

from mtcolor import weights
from mtcolor.weights import WeightsMismatchError, convert_torchvision_state_dict

# Hand-written: the torchvision ResNet-18 state dict shapes (OIHW), independent of mtcolor's tables.
_TV_SHAPES = {"conv1.weight": (64, 3, 7, 7)}
for _c in ("weight", "bias", "running_mean", "running_var"):
    _TV_SHAPES[f"bn1.{_c}"] = (64,)
for _stage, _out, _in in ((1, 64, 64), (2, 128, 64), (3, 256, 128), (4, 512, 256)):
    for _b in (0, 1):
        _bin = _in if _b == 0 else _out
        _TV_SHAPES[f"layer{_stage}.{_b}.conv1.weight"] = (_out, _bin, 3, 3)
        _TV_SHAPES[f"layer{_stage}.{_b}.conv2.weight"] = (_out, _out, 3, 3)
        for _bn in ("bn1", "bn2"):
            for _c in ("weight", "bias", "running_mean", "running_var"):
                _TV_SHAPES[f"layer{_stage}.{_b}.{_bn}.{_c}"] = (_out,)
            _TV_SHAPES[f"layer{_stage}.{_b}.{_bn}.num_batches_tracked"] = ()
        if _b == 0 and _stage > 1:
            _TV_SHAPES[f"layer{_stage}.0.downsample.0.weight"] = (_out, _in, 1, 1)
            for _c in ("weight", "bias", "running_mean", "running_var"):
                _TV_SHAPES[f"layer{_stage}.0.downsample.1.{_c}"] = (_out,)
            _TV_SHAPES[f"layer{_stage}.0.downsample.1.num_batches_tracked"] = ()
_TV_SHAPES["bn1.num_batches_tracked"] = ()
_TV_SHAPES["fc.weight"] = (1000, 512)
_TV_SHAPES["fc.bias"] = (1000,)


def _random_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in _TV_SHAPES.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = np.array(rng.integers(0, 1000), dtype=np.int64)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            sd[key] = rng.standard_normal(shape).astype(np.float32)
    return sd


def _count(tree):
    return sum(_count(v) if isinstance(v, dict) else int(np.prod(v.shape)) for v in tree.values())


def test_convert_maps_every_torchvision_key():
    sd = _random_state_dict()
    variables = convert_torchvision_state_dict(sd)
    params, stats = variables["params"], variables["batch_stats"]
    # Trainable parameters of the torchvision body (without fc): 11,176,512.
    assert _count(params) == 11_176_512
    assert _count(stats) == 2 * (64 + 2 * 2 * (64 + 128 + 256 + 512) + 128 + 256 + 512)
    # OIHW -> HWIO, element by element.
    w = sd["layer2.0.conv1.weight"]
    k = params["layer2_0"]["conv1"]["kernel"]
    assert k.shape == (3, 3, 64, 128)
    assert k[2, 0, 5, 7] == w[7, 5, 2, 0]
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
    np.testing.assert_array_equal(
        params["layer3_0"]["downsample_conv"]["kernel"][0, 0], sd["layer3.0.downsample.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(params["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])
    np.testing.assert_array_equal(params["layer4_1"]["bn2"]["bias"], sd["layer4.1.bn2.bias"])
    np.testing.assert_array_equal(stats["layer1_1"]["bn1"]["mean"], sd["layer1.1.bn1.running_mean"])
    np.testing.assert_array_equal(stats["layer2_0"]["downsample_bn"]["var"], sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(stats["bn1"]["var"], sd["bn1.running_var"])
    assert "downsample_conv" not in params["layer1_0"] and "downsample_conv" not in params["layer2_1"]
    assert set(params) == {"conv1", "bn1"} | {f"layer{s}_{b}" for s in range(1, 5) for b in (0, 1)}
    assert all(v.dtype == np.float32 for v in [k, stats["bn1"]["mean"]])


def test_convert_gray_conv1_is_sum_of_rgb_kernels():
    sd = _random_state_dict(1)
    variables = convert_torchvision_state_dict(sd, in_channels=1)
    k = variables["params"]["conv1"]["kernel"]
    assert k.shape == (7, 7, 1, 64)
    w = sd["conv1.weight"]
    # By hand for one output channel / tap: the R, G and B weights added.
    assert k[3, 4, 0, 10] == pytest.approx(float(w[10, 0, 3, 4]) + float(w[10, 1, 3, 4]) + float(w[10, 2, 3, 4]), rel=1e-6)
    # A gray image through the summed kernel equals the same image repeated in 3 channels.
    x = np.random.default_rng(2).standard_normal((7, 7)).astype(np.float64)
    gray = np.einsum("hw,hwo->o", x, k[:, :, 0, :].astype(np.float64))
    rgb = np.einsum("chw,ochw->o", np.stack([x, x, x]), w.astype(np.float64))
    np.testing.assert_allclose(gray, rgb, rtol=1e-5, atol=1e-5)
    # Everything else is unchanged.
    np.testing.assert_array_equal(
        variables["params"]["layer1_0"]["conv1"]["kernel"],
        convert_torchvision_state_dict(sd)["params"]["layer1_0"]["conv1"]["kernel"],
    )


def test_convert_ignores_fc_and_accepts_prefix():
    sd = _random_state_dict(3)
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    a = convert_torchvision_state_dict(sd)
    b = convert_torchvision_state_dict({"module." + k: v for k, v in no_fc.items()})
    np.testing.assert_array_equal(a["params"]["conv1"]["kernel"], b["params"]["conv1"]["kernel"])


def test_convert_lists_all_problems_in_one_error():
    sd = _random_state_dict(4)
    del sd["layer1.0.bn1.weight"]
    del sd["layer3.0.downsample.0.weight"]
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["head.weight"] = np.zeros((2,), np.float32)
    sd["layer4.1.conv2.weight"] = np.zeros((512, 256, 3, 3), np.float32)
    sd["bn1.running_var"] = np.zeros((32,), np.float32)
    with pytest.raises(WeightsMismatchError) as info:
        convert_torchvision_state_dict(sd, path="/some/where/resnet.pth")
    err = info.value
    assert isinstance(err, ValueError)
    assert sorted(err.missing) == ["layer1.0.bn1.weight", "layer3.0.downsample.0.weight"]
    assert sorted(err.unexpected) == ["head.weight", "layer5.0.conv1.weight"]
    assert sorted(k for k, _, _ in err.shape_mismatches) == ["bn1.running_var", "layer4.1.conv2.weight"]
    msg = str(err)
    for key in ["layer1.0.bn1.weight", "layer3.0.downsample.0.weight", "head.weight",
                "layer5.0.conv1.weight", "layer4.1.conv2.weight", "bn1.running_var",
                "/some/where/resnet.pth", "(512, 256, 3, 3)"]:
        assert key in msg
    assert "fc." not in msg and "num_batches_tracked" not in msg


def test_convert_rgb_rejects_gray_conv1_but_gray_accepts_it():
    sd = _random_state_dict(5)
    sd["conv1.weight"] = sd["conv1.weight"][:, :1]
    with pytest.raises(WeightsMismatchError, match="conv1.weight"):
        convert_torchvision_state_dict(sd, in_channels=3)
    k = convert_torchvision_state_dict(sd, in_channels=1)["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(k[:, :, 0, :], sd["conv1.weight"][:, 0].transpose(1, 2, 0))
