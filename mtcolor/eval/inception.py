"""The FID Inception-v3 (pytorch-fid's variant of the 2015-12-05 TF graph) in flax linen, NHWC.

`FIDInceptionV3()(rgb)` maps RGB images in [0, 1], (N, H, W, 3) of any size, to the 2048-d pool3
features that FID is defined on. `load_fid_inception(path | "download")` reads the standard weights
file `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's GitHub release) without torch and
returns the flax variables {"params", "batch_stats"}.

The architecture is torchvision's Inception3 (no aux head, no fc) with the block patches of
pytorch-fid that make it compute what the TF FID graph computes:
- the pool branch of the A, C and first E blocks (Mixed_5b-d, 6b-e, 7b) averages over the valid
  pixels of its 3x3 window only (`count_include_pad=False`: TF's "SAME" average pool does not
  count the padding zeros);
- the pool branch of the last E block (Mixed_7c) is a 3x3 *max* pool (a quirk of the TF graph);
- BatchNorm epsilon 1e-3 everywhere (BasicConv2d = conv without bias, BN, ReLU).

Input handling follows pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`:
bilinear resize to 299x299 with half-pixel centres and no antialiasing (torch's
`F.interpolate(mode="bilinear", align_corners=False)`; `jax.image.resize(..., antialias=False)`
computes the same weights, edges included), then x -> 2x - 1. The original TF FID code resized
differently (TF1 `tf.image.resize_bilinear` with align_corners=False but without half-pixel
centres), so features of non-299 inputs differ slightly from TF's; for 299x299 inputs there is no
resize and the two agree. pytorch-fid documents its FIDs as close to, not identical to, TF's.

Names mirror torch's module tree (Conv2d_1a_3x3/conv, Mixed_5b/branch1x1/bn, ...), so the
weights map mechanically: `<path>.conv.weight` (OIHW) -> params `<path>/conv/kernel` (HWIO),
`<path>.bn.{weight,bias,running_mean,running_var}` -> params scale/bias, batch_stats mean/var.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtcolor import hub, state_dict_files
from mtcolor.weights import TORCH_BN_FIELDS, WeightsMismatchError, convert_state_dict

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
FEATURE_DIM = 2048

# Trainable parameters of pytorch-fid's FID Inception without its fc layer (conv kernels + BN
# scale/bias; BN running statistics are buffers, not parameters). Derived by hand with
# BasicConv(c_in, c_out, k_h x k_w) = k_h k_w c_in c_out + 2 c_out:
#   stem: 928 + 9,280 + 18,560 + 5,280 + 138,624                         =    172,672
#   A(c_in, pool p) = c_in (176 + p) + 215,904 + 2p:
#     Mixed_5b (192, 32) 255,904; Mixed_5c (256, 64) 277,472; 5d (288, 64) 285,152
#   B(288) = 996,096 + 18,560 + 55,488 + 83,136                           =  1,153,280
#   C(c7) = 296,448 + 4,236 c7 + 28 c7^2:
#     Mixed_6b (128) 1,297,408; 6c, 6d (160) 1,691,008 each; 6e (192) 2,141,952
#   D(768) = 147,840 + 553,600 + 147,840 + 2 x 258,432 + 332,160          =  1,698,304
#   E(c_in) = 1,344 c_in + 3,324,288: Mixed_7b (1280) 5,044,608; 7c (2048) 6,076,800
#   total                                                                 = 21,785,568
# benchmarks/make_inception_fixture.py prints the same per-block sums from torch's own module
# tree (`named_parameters()` without fc) and stores the total in the golden fixture.
FID_INCEPTION_PARAM_COUNT = 21_785_568


class BasicConv(nn.Module):
    """Conv (no bias, explicit symmetric padding) -> BatchNorm(eps 1e-3, running stats) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        (ph, pw) = self.padding
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=(self.stride, self.stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _conv(features, kernel, stride=1, padding=(0, 0), *, name, dtype):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    return BasicConv(features, kernel, stride, padding, dtype=dtype, name=name)


def avg_pool_3x3_valid_only(x):
    """3x3, stride 1, pad 1 average over the window's in-image pixels (count_include_pad=False)."""
    window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, jnp.array(0, x.dtype), jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, jnp.array(0, x.dtype), jax.lax.add, window, strides, pad)
    return total / count


def max_pool(x, size=3, stride=2, pad=0):
    return nn.max_pool(x, (size, size), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        b1 = c(64, 1, name="branch1x1")(x)
        b5 = c(64, 5, padding=(2, 2), name="branch5x5_2")(c(48, 1, name="branch5x5_1")(x))
        b3 = c(64, 1, name="branch3x3dbl_1")(x)
        b3 = c(96, 3, padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = c(96, 3, padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = c(self.pool_features, 1, name="branch_pool")(avg_pool_3x3_valid_only(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        b3 = c(384, 3, stride=2, name="branch3x3")(x)
        bd = c(64, 1, name="branch3x3dbl_1")(x)
        bd = c(96, 3, padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = c(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        c7 = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        b1 = c(192, 1, name="branch1x1")(x)
        b7 = c(c7, 1, name="branch7x7_1")(x)
        b7 = c(c7, **row, name="branch7x7_2")(b7)
        b7 = c(192, **col, name="branch7x7_3")(b7)
        bd = c(c7, 1, name="branch7x7dbl_1")(x)
        bd = c(c7, **col, name="branch7x7dbl_2")(bd)
        bd = c(c7, **row, name="branch7x7dbl_3")(bd)
        bd = c(c7, **col, name="branch7x7dbl_4")(bd)
        bd = c(192, **row, name="branch7x7dbl_5")(bd)
        bp = c(192, 1, name="branch_pool")(avg_pool_3x3_valid_only(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        b3 = c(320, 3, stride=2, name="branch3x3_2")(c(192, 1, name="branch3x3_1")(x))
        b7 = c(192, 1, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (`max_pool_branch=False`) and Mixed_7c (True: the FID graph's max-pool quirk)."""

    max_pool_branch: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = c(320, 1, name="branch1x1")(x)
        b3 = c(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [c(384, **row, name="branch3x3_2a")(b3), c(384, **col, name="branch3x3_2b")(b3)],
            axis=-1,
        )
        bd = c(448, 1, name="branch3x3dbl_1")(x)
        bd = c(384, 3, padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [c(384, **row, name="branch3x3dbl_3a")(bd), c(384, **col, name="branch3x3dbl_3b")(bd)],
            axis=-1,
        )
        pooled = max_pool(x, 3, 1, 1) if self.max_pool_branch else avg_pool_3x3_valid_only(x)
        bp = c(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """RGB in [0, 1], (N, H, W, 3) -> (N, 2048) pool3 features of the FID Inception-v3.

    `resize_input=False` feeds the images at their own size (the network is fully convolutional
    down to 75x75); FID proper always uses the default 299x299 resize.
    """

    resize_input: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, rgb):
        x = rgb.astype(jnp.float32)
        if self.resize_input and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            x = jax.image.resize(
                x,
                (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3]),
                method="bilinear",
                antialias=False,
            )
        x = (2.0 * x - 1.0).astype(self.dtype)
        c = lambda *a, **k: _conv(*a, dtype=self.dtype, **k)  # noqa: E731
        x = c(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = c(32, 3, name="Conv2d_2a_3x3")(x)
        x = c(64, 3, padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = max_pool(x)
        x = c(80, 1, name="Conv2d_3b_1x1")(x)
        x = c(192, 3, name="Conv2d_4a_3x3")(x)
        x = max_pool(x)
        x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
        x = InceptionC(128, dtype=self.dtype, name="Mixed_6b")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6c")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6d")(x)
        x = InceptionC(192, dtype=self.dtype, name="Mixed_6e")(x)
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
        x = InceptionE(False, dtype=self.dtype, name="Mixed_7b")(x)
        x = InceptionE(True, dtype=self.dtype, name="Mixed_7c")(x)
        return x.astype(jnp.float32).mean(axis=(1, 2))  # adaptive average pool to 1x1


# ---------------------------------------------------------------------------------------------
# Weights: torch state dict -> flax variables.


class FIDWeightsMismatchError(WeightsMismatchError):
    """The state dict does not fit the FID Inception-v3 (lists missing/unexpected/mis-shaped
    keys)."""

    model_name = "FID Inception-v3"


def expected_layout() -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
    """torch key -> (torch shape, flax collection, flax path), from the flax model's shapes.

    Shapes come from `jax.eval_shape` of the model (no compute); the file is the independent
    side: any architecture slip shows up as mismatches against the real weights, and the golden
    test checks the outputs against pytorch-fid itself.
    """
    shapes = jax.eval_shape(
        FIDInceptionV3().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )
    torch_field = {flax: torch for torch, (_, flax) in TORCH_BN_FIELDS.items()}
    layout = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes[collection])[0]:
            names = tuple(p.key for p in path)
            *module, leaf_name = names
            if leaf_name == "kernel":  # HWIO -> torch OIHW
                h, w, i, o = leaf.shape
                layout[".".join(module) + ".weight"] = ((o, i, h, w), collection, names)
            else:
                layout[".".join(module) + "." + torch_field[leaf_name]] = (
                    tuple(leaf.shape),
                    collection,
                    names,
                )
    return layout


def convert_fid_inception_state_dict(state_dict: Mapping[str, np.ndarray], *, path=None) -> dict:
    """pytorch-fid's Inception state dict -> {"params", "batch_stats"} of `FIDInceptionV3`.

    Its `fc` (the 1008-way ImageNet classifier after pool3, where FID stops) is ignored."""
    return convert_state_dict(
        state_dict, expected_layout(), error_type=FIDWeightsMismatchError, path=path
    )


def find_fid_inception_weights(*, download: bool = True, urlopen=None) -> Path:
    """`pt_inception-2015-12-05-6726825d.pth` from torch's hub cache (where pytorch-fid caches it),
    else downloaded there with its sha256 prefix (6726825d) checked."""
    return hub.find_hub_checkpoint(
        FID_WEIGHTS_URL,
        how_to_fetch='`pip install pytorch-fid` and run `python -c "from pytorch_fid.inception '
        'import fid_inception_v3; fid_inception_v3()"`',
        pass_path_hint="pass its path with --fid_weights PATH",
        download=download,
        urlopen=urlopen,
    )


def load_fid_inception(weights="download", *, download: bool = True) -> dict:
    """`FIDInceptionV3` variables from a weights file path, or "download" (find in torch's hub
    cache, else download there with the hash checked; offline: `WeightsNotAvailableError` with
    instructions). pytorch-fid published the file in 2019, before torch 1.6 made the zip archive
    the default; `mtcolor.state_dict_files.read_state_dict` reads both formats without torch."""
    if isinstance(weights, str) and weights == "download":
        path = find_fid_inception_weights(download=download)
    else:
        path = Path(weights).expanduser()
    return convert_fid_inception_state_dict(state_dict_files.read_state_dict(path), path=path)


def fid_feature_extractor(variables):
    """The "fid" `FeatureExtractor` (see `mtcolor.eval.frechet`) for loaded `FIDInceptionV3`
    variables.

    The variables are a jit *argument*, not a closure: closed-over they would be baked into the
    compiled program as ~90 MB of constants, which XLA:CPU spends tens of seconds folding.
    """
    from mtcolor.eval.frechet import FeatureExtractor

    apply = jax.jit(FIDInceptionV3().apply)
    device_variables = jax.device_put(variables)
    return FeatureExtractor(
        metric_name="fid",
        features=lambda rgb: apply(device_variables, rgb),
        description="FID: Inception-v3 pool3 (2048-d) features, pytorch-fid weights",
    )
