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
        params["layer3_0"]["downsample_conv"]["kernel"][0, 0],
        sd["layer3.0.downsample.0.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(params["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])
    np.testing.assert_array_equal(params["layer4_1"]["bn2"]["bias"], sd["layer4.1.bn2.bias"])
    np.testing.assert_array_equal(stats["layer1_1"]["bn1"]["mean"], sd["layer1.1.bn1.running_mean"])
    np.testing.assert_array_equal(
        stats["layer2_0"]["downsample_bn"]["var"], sd["layer2.0.downsample.1.running_var"]
    )
    np.testing.assert_array_equal(stats["bn1"]["var"], sd["bn1.running_var"])
    assert (
        "downsample_conv" not in params["layer1_0"] and "downsample_conv" not in params["layer2_1"]
    )
    assert set(params) == {"conv1", "bn1"} | {f"layer{s}_{b}" for s in range(1, 5) for b in (0, 1)}
    assert all(v.dtype == np.float32 for v in [k, stats["bn1"]["mean"]])


def test_convert_gray_conv1_is_sum_of_rgb_kernels():
    sd = _random_state_dict(1)
    variables = convert_torchvision_state_dict(sd, in_channels=1)
    k = variables["params"]["conv1"]["kernel"]
    assert k.shape == (7, 7, 1, 64)
    w = sd["conv1.weight"]
    # By hand for one output channel / tap: the R, G and B weights added.
    assert k[3, 4, 0, 10] == pytest.approx(
        float(w[10, 0, 3, 4]) + float(w[10, 1, 3, 4]) + float(w[10, 2, 3, 4]), rel=1e-6
    )
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
    assert sorted(k for k, _, _ in err.shape_mismatches) == [
        "bn1.running_var",
        "layer4.1.conv2.weight",
    ]
    msg = str(err)
    for key in [
        "layer1.0.bn1.weight",
        "layer3.0.downsample.0.weight",
        "head.weight",
        "layer5.0.conv1.weight",
        "layer4.1.conv2.weight",
        "bn1.running_var",
        "/some/where/resnet.pth",
        "(512, 256, 3, 3)",
    ]:
        assert key in msg
    assert "fc." not in msg and "num_batches_tracked" not in msg


def test_convert_rgb_rejects_gray_conv1_but_gray_accepts_it():
    sd = _random_state_dict(5)
    sd["conv1.weight"] = sd["conv1.weight"][:, :1]
    with pytest.raises(WeightsMismatchError, match="conv1.weight"):
        convert_torchvision_state_dict(sd, in_channels=3)
    k = convert_torchvision_state_dict(sd, in_channels=1)["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(k[:, :, 0, :], sd["conv1.weight"][:, 0].transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------
# File readers.

import os  # noqa: E402
import pickletools  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


# torch_legacy.pth holds the same tensors as torch_small.pth, in torch's pre-1.6 non-zip format.
@pytest.mark.parametrize("filename", ["torch_small.pth", "torch_legacy.pth"])
def test_pth_reader_matches_values_torch_wrote(filename):
    path = FIXTURES / filename
    assert zipfile.is_zipfile(path) == (filename == "torch_small.pth")  # control: the two formats
    sd = weights.read_state_dict(path)
    expected = np.load(FIXTURES / "torch_small_expected.npz")
    names = {k.removesuffix("__as_float32") for k in expected.files}
    assert set(sd) == names
    for key in names:
        if key == "bf16":
            assert sd[key].dtype.name == "bfloat16"
            np.testing.assert_array_equal(sd[key].astype(np.float32), expected["bf16__as_float32"])
            continue
        assert sd[key].dtype == expected[key].dtype, key
        assert sd[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(sd[key], expected[key], err_msg=key)
    # The layouts that need offset/stride handling, checked by what torch stored.
    assert sd["f32_view"].shape == (3, 4) and sd["expanded"].shape == (2, 3)
    assert sd["i64"][-1] == 2**62 and sd["i64"][0] == -(2**40)
    # Arrays own their memory (not views into a shared storage buffer).
    assert sd["f32_view"].flags.owndata and sd["f32_view"].flags.writeable


def test_malicious_pickle_is_refused_without_side_effect(tmp_path, monkeypatch):
    path = FIXTURES / "torch_malicious.pth"
    # Control: the fixture really asks for os.system (so this test can fail).
    with zipfile.ZipFile(path) as z:
        data = z.read("torch_malicious/data.pkl")
    assert any(
        op.name == "GLOBAL" and arg == "posix system" for op, arg, _ in pickletools.genops(data)
    )
    monkeypatch.chdir(tmp_path)  # the pickle would `touch mtcolor_pwned_marker` in the cwd
    with pytest.raises(weights.UnsafeWeightsFileError, match=r"posix\.system") as info:
        weights.load_torchvision_resnet18(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "mtcolor_pwned_marker").exists()


# A hand-assembled torch-style pickle (protocol 2 opcodes), for layouts torch would not write.
def _g(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _u(s):
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _i(n):
    return b"J" + int(n).to_bytes(4, "little", signed=True)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(entries):
    """entries: {name: (storage type, storage key, numel, offset, size, stride)}."""
    out = b"\x80\x02}("
    for name, (stype, key, numel, offset, size, stride) in entries.items():
        pid = _tuple([_u("storage"), _g("torch", stype), _u(key), _u("cpu"), _i(numel)]) + b"Q"
        args = _tuple(
            [
                pid,
                _i(offset),
                _tuple(map(_i, size)),
                _tuple(map(_i, stride)),
                b"\x89",
                _g("collections", "OrderedDict") + b")R",
            ]
        )
        out += _u(name) + _g("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return out + b"u."


def _write_pth(path, pickle_bytes, storages, byteorder="little"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def test_hand_pickle_control_and_big_endian(tmp_path):
    values = np.arange(6, dtype=np.float32) * 1.5
    entries = {"w": ("FloatStorage", "0", 6, 1, (2, 2), (1, 2))}
    little = weights.read_state_dict(
        _write_pth(tmp_path / "l.pth", _tensor_pickle(entries), {"0": values.tobytes()})
    )
    # offset 1, strides (1, 2): [[v1, v3], [v2, v4]]
    np.testing.assert_array_equal(little["w"], [[1.5, 4.5], [3.0, 6.0]])
    big = weights.read_state_dict(
        _write_pth(
            tmp_path / "b.pth",
            _tensor_pickle(entries),
            {"0": values.astype(">f4").tobytes()},
            byteorder="big",
        )
    )
    np.testing.assert_array_equal(big["w"], little["w"])


def test_out_of_bounds_and_truncated_storages_are_errors(tmp_path):
    raw = np.zeros(4, np.float32).tobytes()
    past_end = _tensor_pickle({"w": ("FloatStorage", "0", 4, 1, (2, 2), (2, 1))})  # last index 4
    with pytest.raises(weights.WeightsFileFormatError, match="past its storage"):
        weights.read_state_dict(_write_pth(tmp_path / "oob.pth", past_end, {"0": raw}))
    too_big = _tensor_pickle({"w": ("FloatStorage", "0", 8, 0, (8,), (1,))})
    with pytest.raises(weights.WeightsFileFormatError, match="has 16 bytes"):
        weights.read_state_dict(_write_pth(tmp_path / "short.pth", too_big, {"0": raw}))


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "eval"),
        ("torch", "Tensor"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ],
)
def test_any_other_global_is_refused(tmp_path, module, name):
    marker = tmp_path / "marker"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    data = b"\x80\x02" + _g(module, name) + _tuple([_u(code)]) + b"R."
    if module == "builtins":
        import pickle

        pickle.loads(data)  # control: unrestricted, this pickle runs its code
        assert marker.exists()
        marker.unlink()
    path = _write_pth(tmp_path / "evil.pth", data, {})
    with pytest.raises(weights.UnsafeWeightsFileError, match=f"{module}.{name}"):
        weights.read_state_dict(path)
    assert not marker.exists()


# The legacy format's leading records, as torch writes them (torch/serialization.py).
_LEGACY_HEADER = (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_file(path, records):
    import pickle

    with open(path, "wb") as f:
        for record in records:
            pickle.dump(record, f, protocol=2)
    return path


def test_legacy_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned_marker"
    # A state dict whose pickle calls os.system, in the object record and in the magic-number slot
    # (a reader that trusted the header records would run the latter before any check).
    in_object = _legacy_file(tmp_path / "in_object.pth", [*_LEGACY_HEADER, {"w": _Evil(marker)}])
    in_header = _legacy_file(tmp_path / "in_header.pth", [_Evil(marker), *_LEGACY_HEADER[1:], {}])
    for path in (in_object, in_header):
        with pytest.raises(weights.UnsafeWeightsFileError, match=r"posix\.system") as info:
            weights.read_state_dict(path)
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_legacy_truncated_and_foreign_files_are_format_errors(tmp_path):
    data = (FIXTURES / "torch_legacy.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-3])
    with pytest.raises(weights.WeightsFileFormatError, match="truncated"):
        weights.read_state_dict(tmp_path / "cut.pth")
    wrong_magic = _legacy_file(tmp_path / "magic.pth", [12345, *_LEGACY_HEADER[1:], {}])
    with pytest.raises(weights.WeightsFileFormatError, match="magic"):
        weights.read_state_dict(wrong_magic)
    (tmp_path / "text.pth").write_bytes(b"hello")
    with pytest.raises(weights.WeightsFileFormatError, match="text.pth.*Re-save"):
        weights.read_state_dict(tmp_path / "text.pth")


def test_unknown_and_missing_files_name_the_path(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(weights.WeightsFileFormatError, match="w.h5"):
        weights.read_state_dict(tmp_path / "w.h5")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        weights.load_torchvision_resnet18(tmp_path / "nothere.pth")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(weights.WeightsFileFormatError, match="bad.npz"):
        weights.read_state_dict(tmp_path / "bad.npz")


def test_torch_written_resnet18_maps_onto_flax_names():
    """A real torchvision resnet18 state dict (written by torch; tensors are strided views of
    small storages to keep the file small) against torch's own values at random indices."""
    variables = weights.load_torchvision_resnet18(FIXTURES / "resnet18_strided.pth")
    probe = np.load(FIXTURES / "resnet18_strided_probe.npz")
    keys = [k.removesuffix("__index") for k in probe.files if k.endswith("__index")]
    assert len(keys) == 102  # 20 convs + 20 BNs x 4 + fc.weight, fc.bias
    bn_names = {
        "weight": ("params", "scale"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }
    checked = 0
    for key in keys:
        if key.startswith("fc."):
            continue
        idx, val = probe[key + "__index"], probe[key + "__value"]
        parts = key.split(".")
        if parts[0].startswith("layer"):
            block, rest = f"{parts[0]}_{parts[1]}", parts[2:]
            module = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(
                ".".join(rest[:2]), rest[0]
            )
            path, field = [block, module], rest[-1]
        else:
            path, field = [parts[0]], parts[1]
        if field == "weight" and idx.shape[1] == 4:
            arr = variables["params"]
            for p in path:
                arr = arr[p]
            got = arr["kernel"][idx[:, 2], idx[:, 3], idx[:, 1], idx[:, 0]]
        else:
            collection, name = bn_names[field]
            arr = variables[collection]
            for p in path:
                arr = arr[p]
            got = arr[name][idx[:, 0]]
        np.testing.assert_array_equal(got, val, err_msg=key)
        checked += 1
    assert checked == 100


def test_safetensors_and_npz_roundtrip(tmp_path):
    import safetensors.numpy

    sd = _random_state_dict(6)
    safetensors.numpy.save_file(sd, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **sd)
    for name in ("w.safetensors", "w.npz"):
        v = weights.load_torchvision_resnet18(tmp_path / name)
        np.testing.assert_array_equal(
            v["params"]["layer3_1"]["conv2"]["kernel"],
            sd["layer3.1.conv2.weight"].transpose(2, 3, 1, 0),
        )
        np.testing.assert_array_equal(
            v["batch_stats"]["layer4_0"]["downsample_bn"]["mean"],
            sd["layer4.0.downsample.1.running_mean"],
        )
        v1 = weights.load_torchvision_resnet18(tmp_path / name, in_channels=1)
        np.testing.assert_allclose(
            v1["params"]["conv1"]["kernel"][..., 0, :],
            sd["conv1.weight"].sum(1).transpose(1, 2, 0),
            rtol=1e-6,
            atol=1e-6,
        )
    # Half precision files come back as float32 (the model's parameter dtype).
    sd16 = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in sd.items()}
    safetensors.numpy.save_file(sd16, str(tmp_path / "h.safetensors"))
    v = weights.load_torchvision_resnet18(tmp_path / "h.safetensors")
    assert v["params"]["bn1"]["scale"].dtype == np.float32
    np.testing.assert_array_equal(
        v["params"]["bn1"]["scale"], sd16["bn1.weight"].astype(np.float32)
    )


def test_mismatch_error_from_file_names_the_file(tmp_path):
    sd = _random_state_dict(7)
    del sd["layer2.1.bn2.bias"]
    np.savez(tmp_path / "broken.npz", **sd)
    with pytest.raises(WeightsMismatchError, match="layer2.1.bn2.bias") as info:
        weights.load_torchvision_resnet18(tmp_path / "broken.npz")
    assert "broken.npz" in str(info.value)


def test_shapes_agree_with_flax_resnet18():
    """Cross-check of two independent hand tables: this module's and mtcolor.models'."""
    import jax

    from mtcolor import models

    for in_channels, n_params in ((3, 11_176_512), (1, 11_170_240)):
        shapes = jax.eval_shape(
            lambda in_channels=in_channels: models.ResNet18(in_channels=in_channels).init(
                jax.random.PRNGKey(0), np.zeros((1, 32, 32, in_channels), np.float32)
            )
        )
        sd = {
            k: np.zeros(s, np.float32)
            for k, s in weights.expected_torchvision_shapes(in_channels).items()
        }
        ours = convert_torchvision_state_dict(sd, in_channels)
        as_shapes = jax.tree_util.tree_map(lambda a: a.shape, ours)
        theirs = jax.tree_util.tree_map(
            lambda a: a.shape, {k: shapes[k] for k in ("params", "batch_stats")}
        )
        assert as_shapes == jax.tree_util.tree_map(lambda s: s, theirs)
        assert _count(ours["params"]) == n_params


# ---------------------------------------------------------------------------------------------
# pretrained="torchvision": cache lookup and checked download, no real network.

OFFICIAL = "resnet18-f37072fd.pth"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def _sha256(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_torchvision_found_in_torch_home(isolated_cache, offline):
    isolated_cache.mkdir(parents=True)
    (isolated_cache / OFFICIAL).write_bytes((FIXTURES / "resnet18_strided.pth").read_bytes())
    v = weights.load_resnet18("torchvision", 1)
    ref = weights.load_torchvision_resnet18(FIXTURES / "resnet18_strided.pth", 1)
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"], ref["params"]["conv1"]["kernel"])


def test_torchvision_found_in_home_cache_and_xdg_default(
    tmp_path, isolated_cache, offline, monkeypatch
):
    home_cache = tmp_path / "home" / ".cache" / "torch" / "hub" / "checkpoints"
    home_cache.mkdir(parents=True)
    (home_cache / OFFICIAL).write_bytes(b"placeholder")
    assert weights.find_torchvision_resnet18() == home_cache / OFFICIAL
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert (
        weights.torch_hub_checkpoint_dirs()[0] == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    )


def test_torchvision_offline_fails_with_instructions(isolated_cache, offline):
    with pytest.raises(weights.WeightsNotAvailableError) as info:
        weights.load_resnet18("torchvision", 3)
    msg = str(info.value)
    assert str(isolated_cache) in msg and weights.TORCHVISION_RESNET18_URL in msg
    assert "network is unreachable" in msg and "TORCH_HOME" in msg
    assert not isolated_cache.exists() or list(isolated_cache.iterdir()) == []  # no partial file
    with pytest.raises(weights.WeightsNotAvailableError, match="not found"):
        weights.load_resnet18("torchvision", 3, download=False)


def test_download_verifies_hash(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    content = (FIXTURES / "torch_small.pth").read_bytes()
    good = src / f"tiny-{_sha256(FIXTURES / 'torch_small.pth')[:8]}.pth"
    good.write_bytes(content)
    bad = src / "tiny-00000000.pth"
    bad.write_bytes(content)
    dest = tmp_path / "cache"
    got = weights.download_checked(good.as_uri(), dest)
    assert got == dest / good.name and got.read_bytes() == content
    with pytest.raises(ValueError, match="does not start with the '00000000'"):
        weights.download_checked(bad.as_uri(), dest)
    assert sorted(p.name for p in dest.iterdir()) == [good.name]  # bad file and temp file gone


def test_torchvision_download_into_cache(tmp_path, isolated_cache, monkeypatch):
    """The "torchvision" path end to end, with the official URL pointed at a local file."""
    served = tmp_path / "server"
    served.mkdir()
    fixture = FIXTURES / "resnet18_strided.pth"
    name = f"resnet18-{_sha256(fixture)[:8]}.pth"
    (served / name).write_bytes(fixture.read_bytes())
    monkeypatch.setattr(weights, "TORCHVISION_RESNET18_URL", (served / name).as_uri())
    v = weights.load_resnet18("torchvision", 3)
    assert (isolated_cache / name).read_bytes() == fixture.read_bytes()
    ref = weights.load_torchvision_resnet18(fixture)
    np.testing.assert_array_equal(
        v["params"]["layer4_1"]["conv2"]["kernel"], ref["params"]["layer4_1"]["conv2"]["kernel"]
    )
    # A served file whose hash does not match its name is rejected and not cached.
    (served / "resnet18-0badbeef.pth").write_bytes(fixture.read_bytes())
    monkeypatch.setattr(
        weights, "TORCHVISION_RESNET18_URL", (served / "resnet18-0badbeef.pth").as_uri()
    )
    with pytest.raises(ValueError, match="0badbeef"):
        weights.load_resnet18("torchvision", 3)
    assert not (isolated_cache / "resnet18-0badbeef.pth").exists()


def test_load_resnet18_path_and_none(tmp_path):
    np.savez(tmp_path / "w.npz", **_random_state_dict(8))
    v = weights.load_resnet18(str(tmp_path / "w.npz"), 3)
    assert v["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    with pytest.raises(ValueError, match="None"):
        weights.load_resnet18(None, 3)


def test_import_pulls_in_no_torch_or_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, mtcolor.weights; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tensorflow', 'jax', 'flax')]; print(bad); assert not bad"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
