"""The colorization head: bottleneck features -> ab channels in [-1, 1]."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models import conv
from mtcolor.models.conv import conv_general_dilated
from mtcolor.models.initializers import pix2pix_kernel_init, pix2pix_scale_init
from mtcolor.models.resnet import batch_norm
from mtcolor.precision import at_least_float32

Initializer = Callable[..., Any]

# PyTorch ConvTranspose2d(kernel 4, stride 2, padding 1) doubles H and W. flax's ConvTranspose pads
# the stride-dilated input directly, so PyTorch padding p becomes k - 1 - p = 2 per side
# (with transpose_kernel=True the kernel is then PyTorch's weight transposed (2, 3, 1, 0)).
# benchmarks/make_golden_fixtures.py checks this mapping against torch itself.
UPSAMPLE_KERNEL = 4
UPSAMPLE_PADDING = ((2, 2), (2, 2))

# Output phase r (0: even rows, 1: odd rows) of ConvTranspose2d(4, stride 2, padding 1) reads input
# rows m + d for the offsets d below, through kernel tap k: y[2m + r] = sum_d x[m + d] w[k(r, d)].
# (From y[o] = sum_{i, k: o = 2i + k - 1} x[i] w[k].)
_NHWC_HWIO_NAMES = ("NHWC", "HWIO", "NHWC")
_PHASE_TAPS = {0: ((-1, 3), (0, 1)), 1: ((0, 2), (1, 0))}
_PHASE_START = {r: taps[0][1] for r, taps in _PHASE_TAPS.items()}  # 3 and 2


# The form each backend computes ConvTranspose2d(4, 2, 1) in, chosen at lowering time
# (jax.lax.platform_dependent), by measurement (docs/benchmarks.md):
#   "adjoint": the transpose of Conv2d(4, 2, 1) through conv.conv_transpose: forward, input and
#     kernel gradient are that convolution's input gradient, forward and kernel gradient, in the
#     forms mtcolor.models.conv picks per backend (the three kernels PyTorch runs).
#   "phases": four stride-1 2x2 convolutions (conv_transpose_phases), differentiated by autodiff.
#   "dilated": XLA's own transposed convolution (conv_transpose_dilated), what nn.ConvTranspose
#     runs: an input-dilated convolution (cuDNN's on a GPU), differentiated by autodiff.
# XLA:CPU: "adjoint". The dilated form's weight gradient falls off XLA:CPU's fast convolution path
# (the four decoder blocks at 128 px, batch 16, forward + backward: 1.7 s vs 0.15 s as phases); the
# adjoint took 177 ms where the phases took 259 ms (256 px, five blocks: 655 vs 1164 ms), and the
# whole multi-task step ran 1.7-3.2% faster at 128 px, 5.9-6.6% at 256 px
# (benchmarks/decoder_upsample.py, benchmarks/form_ab.py; 2026-11-27, Zen 5).
# GPUs: "adjoint" too, measured on an NVIDIA H200 (XLA:GPU, cuDNN), 256 px: the multi-task
# iteration 6.3% faster than as "phases" in bfloat16 and 10.0% in float32 at batch 16, 6.8% in
# bfloat16 at batch 256 (benchmarks/train_step.py --upsample_forms phases adjoint); the five blocks
# alone, forward + backward, 2.3 vs 3.4 ms in float32 and 1.7 vs 2.5 ms in bfloat16, the adjoint
# fastest on every block (benchmarks/decoder_upsample.py; 2026-11-27). The phases had beaten
# "dilated" there by 1.36-1.39x on the whole iteration (2026-11-26). TPUs ("default") are not
# measured; they take the adjoint too: its three products are a convolution's forward and
# gradients, the kernels every backend optimizes for training. Benchmarks swap an entry to time
# another form (then jax.clear_caches()). Maps of at most SMALL_MAP_PIXELS pixels take none of
# these: conv_transpose_tiny_map, on every backend.
UPSAMPLE_FORMS = {"cpu": "adjoint", "default": "adjoint"}


def conv_transpose_4x4_stride2(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1, no bias), in each backend's faster
    form (``UPSAMPLE_FORMS``), on maps of at most SMALL_MAP_PIXELS pixels as
    :func:`conv_transpose_tiny_map` everywhere; every form gives the same result up to float32
    summation order.

    ``kernel`` has flax's ``ConvTranspose(transpose_kernel=True)`` layout (4, 4, out, in), i.e.
    PyTorch's (in, out, kh, kw) weight transposed (2, 3, 1, 0), so checkpoints are interchangeable
    with ``nn.ConvTranspose``.
    """
    if x.shape[1] * x.shape[2] <= conv.SMALL_MAP_PIXELS:  # read here: one switch for both modules
        return conv_transpose_tiny_map(x, kernel)
    forms = {
        "adjoint": conv_transpose_adjoint,
        "phases": conv_transpose_phases,
        "dilated": conv_transpose_dilated,
    }
    cpu, default = forms[UPSAMPLE_FORMS["cpu"]], forms[UPSAMPLE_FORMS["default"]]
    if cpu is default:  # one form everywhere: no per-platform branch to trace twice
        return cpu(x, kernel)
    return jax.lax.platform_dependent(x, kernel, cpu=cpu, default=default)


def conv_transpose_tiny_map(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """ConvTranspose2d(4, 2, 1) of a small map as two matmuls: each input pixel times the kernel
    as stored (the 16 taps of its 4x4 output window at once), then the windows' overlap-add as a
    product with a constant 0/1 matrix (at HIGHEST precision, summed in float32 at least; in
    bfloat16 the taps are rounded once more before that sum). That matrix is the tap selection of
    the Conv2d(4, stride 2, padding 1) this layer transposes (:func:`conv.tap_selection` of the
    2h x 2w output): tap t of input pixel p lands on output pixel q exactly where tap t of that
    convolution's output pixel p reads pixel q.

    Why on small maps: the phase form slices and transposes four kernels out of the stored layout
    each step, and there the copies cost more than the arithmetic (at 64 px the first block's four
    2 MB phase kernels took 7 ms of the multi-task step on CPU, profiled); here the kernel is read
    as stored, forward and in its gradient, and the block is two products to compile instead of the
    phases' four convolutions, kernel slices and interleaving.
    """
    n, h, w, c_in = x.shape
    c_out = kernel.shape[2]
    taps = jnp.einsum("npc,toc->npto", x.reshape(n, h * w, c_in), kernel.reshape(16, c_out, c_in))
    # (h * w input pixels, 16 taps, 4 * h * w output pixels)
    lands_on = conv.tap_selection((2 * h, 2 * w), (4, 4), (2, 2), ((1, 1), (1, 1)))
    out = jnp.einsum(
        "ptq,npto->nqo",
        jnp.asarray(lands_on, taps.dtype),
        taps,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.promote_types(taps.dtype, jnp.float32),
    )
    return out.reshape(n, 2 * h, 2 * w, c_out).astype(x.dtype)


def conv_transpose_adjoint(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """ConvTranspose2d(4, 2, 1) as the transpose of Conv2d(4, 2, 1) (:func:`conv.conv_transpose`):
    the stored kernel (4, 4, out, in) is that convolution's HWIO kernel, from ``out`` channels on
    the 2h x 2w map to ``in`` channels on the h x w one."""
    n, h, w, _ = x.shape
    return conv.conv_transpose(
        x, kernel, (n, 2 * h, 2 * w, kernel.shape[2]), (2, 2), ((1, 1), (1, 1))
    )


def conv_transpose_dilated(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """ConvTranspose2d(4, 2, 1) as XLA's transposed convolution, exactly what
    ``nn.ConvTranspose(..., padding=UPSAMPLE_PADDING, transpose_kernel=True)`` computes."""
    return jax.lax.conv_transpose(
        x,
        kernel,
        (2, 2),
        UPSAMPLE_PADDING,
        dimension_numbers=_NHWC_HWIO_NAMES,
        transpose_kernel=True,
    )


def conv_transpose_phases(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """ConvTranspose2d(4, 2, 1) as four stride-1 2x2 convolutions, one per output phase.

    Each output phase (even/odd row x even/odd column) is an ordinary stride-1 2x2 convolution of
    the input: the same FLOPs as an efficient transposed conv, with fast gradients everywhere,
    where XLA's input-dilated form of ``nn.ConvTranspose`` has a weight gradient off XLA:CPU's
    fast path and was slower on a GPU too (``UPSAMPLE_FORMS`` gives the measurements).
    The phase kernels are strided slices of ``kernel`` (not sixteen gathered taps): with taps, the
    kernel gradient was a sum of sixteen scattered pieces that XLA fused, transposed, into each of
    Adam's three update fusions and recomputed there (about 0.8 s of a 1 s generator step at
    32 px, profiled); with slices the step took 0.13 s. Tiny maps go through
    :func:`mtcolor.models.conv.conv_general_dilated` (im2col) for the same reason as the encoder.
    """
    n, h, w, _ = x.shape
    rows = []
    for ry in (0, 1):
        cols = []
        for rx in (0, 1):
            # The phase's taps, in the order of its offsets d, are every other kernel row/column
            # taken backwards (3, 1 for even outputs; 2, 0 for odd): one strided slice, so the
            # kernel gradient is four dense pieces rather than sixteen scattered taps.
            phase_kernel = kernel[_PHASE_START[ry] :: -2, _PHASE_START[rx] :: -2]
            cols.append(
                conv_general_dilated(
                    x,
                    jnp.transpose(phase_kernel, (0, 1, 3, 2)),
                    (1, 1),
                    (_phase_padding(ry), _phase_padding(rx)),
                    dimension_numbers=_NHWC_HWIO_NAMES,
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # (n, h, w, rx, c)
    out = jnp.stack(rows, axis=2)  # (n, h, ry, w, rx, c)
    return out.reshape(n, 2 * h, 2 * w, out.shape[-1])


def _phase_padding(phase: int) -> tuple[int, int]:
    """Zero padding (before, after) that makes a stride-1 2x2 window at output m read input rows
    m + d for the phase's offsets d: (1, 0) for (-1, 0), (0, 1) for (0, 1).

    Padding inside the convolution rather than convolving a padded, sliced (h + 1)-pixel window: the
    same result, no copy of the input, and XLA:CPU's convolution library (YNNPACK) was 6x faster on
    it: the decoder's last phase conv at 128 px (16 x 64 x 64 x 64 -> 32) 5.8 ms forward instead
    of 34.5 ms on the 65 x 65 window (2026-11-26, 2-core AMD EPYC)."""
    offsets = [d for d, _ in _PHASE_TAPS[phase]]
    return -min(offsets), max(offsets)


class ConvTranspose4x4Stride2(nn.Module):
    """Drop-in for ``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=UPSAMPLE_PADDING,
    transpose_kernel=True, use_bias=False)``: same parameter name and layout, same result, computed
    by :func:`conv_transpose_4x4_stride2`."""

    features: int
    dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", self.kernel_init, (4, 4, self.features, x.shape[-1]), jnp.float32
        )
        return conv_transpose_4x4_stride2(
            jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
        )


class ColorDecoder(nn.Module):
    """Five upsampling blocks x2 each (ConvTranspose 4x4/2 -> BN -> [Dropout] -> ReLU), then a
    3x3 conv to 2 channels and tanh: (N, h, w, C) -> (N, 32h, 32w, 2), float32 output.

    The paper only says "blocks of transposed convolutions, ReLU activations, and batch
    normalization" with dropout and a Tanh output. Choices (see docs/architecture.md):
      * widths (256, 128, 64, 64, 32): at each resolution the same width as the ResNet-18 map of
        that resolution (layer3 256 @ /16, layer2 128 @ /8, layer1 64 @ /4, stem 64 @ /2), so a
        U-Net skip could later be concatenated without reshaping, and 32 at full resolution to
        keep the 256x256 block cheap;
      * dropout 0.5 in the first three blocks, as pix2pix's U-Net decoder (the GAN's noise source);
      * transposed convs have no bias (a BN follows, as in pix2pix with BatchNorm);
      * a final 3x3 stride-1 conv (with bias) maps to ab so the last layer sees a neighbourhood
        rather than one pixel, then tanh.
    Any input with h, w >= 1 works; for images this means sizes divisible by 32.
    """

    features: Sequence[int] = (256, 128, 64, 64, 32)
    dropout_rate: float = 0.5
    dropout_blocks: int = 3
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = jnp.asarray(features, self.dtype)
        for index, width in enumerate(self.features):
            x = self.upsampling_block(x, index, width, train)
        return self.to_ab(x)

    # The two pieces the U-Net decoder (mtcolor.models.unet) shares. Called from a compact
    # __call__, so the layers they make are this module's own (parameters "up{i}_convT", ...).

    def upsampling_block(self, x: jnp.ndarray, index: int, width: int, train: bool) -> jnp.ndarray:
        """Block `index`: ConvTranspose 4x4/2 -> BN -> [Dropout in the first blocks] -> ReLU."""
        x = ConvTranspose4x4Stride2(
            width, dtype=self.dtype, kernel_init=self.kernel_init, name=f"up{index}_convT"
        )(x)
        x = batch_norm(train, self.dtype, self.scale_init, f"up{index}_bn")(x)
        if index < self.dropout_blocks and self.dropout_rate > 0:
            # pix2pix order: ConvT -> BN -> Dropout -> ReLU.
            x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"up{index}_dropout")(x)
        return nn.relu(x)

    def to_ab(self, x: jnp.ndarray) -> jnp.ndarray:
        """3x3 conv with bias to the two ab channels, then tanh; at least float32."""
        x = nn.Conv(
            2,
            (3, 3),
            padding=((1, 1), (1, 1)),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            conv_general_dilated=conv_general_dilated,
            name="to_ab",
        )(x)
        return at_least_float32(jnp.tanh(x))
