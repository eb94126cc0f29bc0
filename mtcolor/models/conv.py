"""Convolutions in a form that keeps XLA:CPU on its fast path.

On CPU, XLA sends some convolutions on tiny maps to a generic loop that runs at about 1 GFLOP/s
instead of its fast library path (measured here, batch 16, forward + backward per conv):
  * ResNet-18 layer4's 3x3 convs on the 2x2 map of a 64 px input: 0.88 s, 0.008 s as im2col;
  * the PatchGAN's stride-1 4x4 conv (256 -> 512) on the 4x4 map of a 32 px input: its input
    gradient alone 0.59 s; 0.012 s for forward + backward as im2col;
  * ResNet-18 layer4's first 3x3/2 conv on the 4x4 map of a 64 px input: its input gradient (a
    convolution over the zero-dilated output gradient) 35 ms of a 360 ms multi-task iteration;
    as strided im2col the iteration took 310 ms (2026-11-26).
On maps of up to 4x4 pixels im2col (a matmul over the shifted copies of the padded map) was as fast
or faster in every case measured, forward and backward, and at 8x8 the two were equal, so the
switch is by map size. GPUs and TPUs get the same (equal) result through the same code; the form
only matters where XLA's convolution emitter is slow, and the cost of im2col on a map this small
is negligible everywhere. The shifted copies of such a map are gathered by one matmul with a
constant 0/1 matrix (tiny_map_columns) rather than a slice per tap: as fast, and much less to
compile (the CPU demo's phase-2 step 8.8 s instead of 11.3 s).

Every other NHWC convolution keeps XLA's own convolution, forward and input gradient, and on CPU the
kernel (weight) gradient of convs with few kernel taps (1x1 downsamples, and the decoder's 2x2 phase
convs when its phase form is chosen) is computed as one matrix product per tap: XLA:CPU lowers a
kernel gradient to a convolution whose window is the whole output map, which for these kernels ran
1.3-3.8x slower than the matmuls (the decoder's last phase conv at 256 px, batch 16: 234 vs 61 ms).
The matmul form pays a copy per tap, so with more taps (3x3, 4x4, 7x7) XLA's own form was as fast or
faster on this project's current CPU (AMD EPYC, family 26 / Zen 5: the PatchGAN's 4x4/2 conv 3 -> 64
at 128 px 4.8 vs 26.8 ms); on the slower EPYC VM this project had before, the matmuls had won for
most of those too (benchmarks/conv_kernel_grad.py re-measures both forms; docs/benchmarks.md).

The input gradient of a stride-2 convolution with an even kernel (the PatchGAN's 4x4/2 convs) is, on
CPU, the transpose of the same convolution written as a stride-1 one over the space-to-depth input:
XLA's own is a convolution over the zero-dilated output gradient, off XLA:CPU's convolution library
(49 vs 15 ms for the PatchGAN's conv 64 -> 128 at 128 px, batch 16).

The kernel gradient of those stride-2 convolutions is, on CPU and where the output gradient is
large (at least SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES), the matmul kernel gradient of that same
stride-1 form, folded back: XLA's own is a convolution whose window is the output gradient dilated
by 2, and it slowed down 6-13x from 128 to 256 px (output gradients of 4-17 MB growing to 17-67 MB;
at 256 px, batch 16: conv2 234 vs 132 ms, conv3 119 vs 84 ms, conv1 80 vs 49 ms).

XLA:CPU's own kernel gradient also slowed down per FLOP once its output gradient outgrew about
8 MiB, and summing it over batch chunks of at most that size was faster where it kept XLA's form
(KERNEL_GRADIENT_CHUNK_BYTES): at 256 px the PatchGAN's conv4 (31.5 MB) 260 vs 205 ms in four
chunks, the ResNet stem's 7x7/2 (67 MB) 79 vs 30 ms in eight.

XLA:CPU's stride-2 convolutions also ran faster per batch chunk once their output reached 16 MiB,
forward (FORWARD_CHUNK_MIN_BYTES, FORWARD_CHUNK_BYTES; at 256 px, batch 16: the PatchGAN's conv2
97 vs 59 ms, conv3 88 vs 48 ms, the ResNet stem 36 vs 27 ms) and in the folded kernel gradient
above (SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES: conv2 126 vs 86 ms). Those chunks run as a
loop (lax.map, lax.scan), one chunk's temporaries at a time; XLA's own convolution gradients lost
their fast path inside a loop (100x slower, measured), so their chunks are separate calls, summed.
The whole 256 px multi-task step in phase 2: 5.3-5.5 s -> 5.0-5.2 s (the forward chunks 5.26-5.32
-> 5.01-5.05 s of it).

Stride-1 convolutions with one or two output channels (the decoder's to_ab, the PatchGAN's last
conv) ran at about 11 GFLOP/s in XLA:CPU's forward; on CPU their forward is one matmul of each input
pixel with all the kernel's taps, then a sum of the taps' shifted maps
(few_output_channels_forward, FORWARD_TAPS_MAX_OUT_CHANNELS): the multi-task step 1.9% faster at
128 px (phase 2, benchmarks/form_ab.py). Their kernel gradient is each image's input against its
output gradient shifted to every tap, summed over the images in a scan
(few_output_channels_kernel_gradient, KERNEL_GRADIENT_TAPS_MAX_OUT_CHANNELS): XLA:CPU's transposed
the whole input to channel-major first; the step 1.4-3.0% faster at 64-256 px.

A transposed convolution (conv_transpose: the decoder's ConvTranspose2d(4, 2, 1), on every
backend) is the adjoint of one of these convolutions, computed by that convolution's own three
products in the forms above rather than by differentiating a transposed convolution written out.

Other backends keep XLA's own forms (cuDNN's), chosen at lowering time, except the forms
GPU_FORMS lets GPUs take too (none yet: to be timed on a GPU).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Largest input map (H * W) computed as im2col: 4x4. Measured equal speed at 8x8, faster below.
SMALL_MAP_PIXELS = 16

# Smallest output map (H * W) whose kernel gradient is computed as matmuls on CPU: 14x14. On 8x8
# output maps XLA's kernel gradient was as fast (each form 4-20 ms per conv at batch 16, within
# noise), and each matmul form adds kh * kw dots to compile; from 15x15 (the PatchGAN's 4x4 conv
# 256 -> 512 at 128 px: 0.22 s vs 0.15 s) up the matmuls won.
KERNEL_GRADIENT_MIN_OUTPUT_PIXELS = 14 * 14
# Most kernel taps (kh * kw) whose kernel gradient is computed as matmuls on CPU. The matmul form
# copies one operand per tap; measured per conv of the models at 64, 128 and 256 px (2026-11-26,
# Zen 5, batch 16): with 1 or 4 taps the matmuls won 9 of 10 (1.3-3.8x, equal once), with 9, 16 or
# 49 XLA's own kernel gradient won 17 of 21 (the matmuls at 0.18-0.95x; equal once; 1.1-1.2x in
# three, all at 256 px).
KERNEL_GRADIENT_MAX_TAPS = 4
# Input gradients of stride-2 convolutions with even kernels as a stride-1 convolution over the
# space-to-depth input on CPU (space_to_depth_input_gradient_of). Off: XLA's own.
SPACE_TO_DEPTH_INPUT_GRADIENT = True
# Kernel gradients of the same stride-2 convolutions as the matmul kernel gradient of their stride-1
# space-to-depth form (space_to_depth_kernel_gradient_of) on CPU, from this size of output gradient
# (batch included) up. Measured per PatchGAN conv, batch 16 (2026-11-26, Zen 5): XLA's own kernel
# gradient took 6, 20 and 18 ms for conv1-3 at 128 px (output gradients of 16.8, 8.4 and 4.2 MB;
# the folded form 8, 35 and 18 ms) and 80, 234 and 119 ms at 256 px (67, 34 and 17 MB; folded 49,
# 132 and 84 ms). 0 turns it on everywhere; None off.
SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES = 16 * 2**20
# Largest output gradient (bytes, the batch's) for which XLA's own kernel gradient runs whole on
# CPU; above it, it runs per batch chunk of at most this size and the chunks' gradients are summed.
# Measured alone (2026-11-26, Zen 5, batch 16, best of 5): the PatchGAN's conv4 at 256 px (31.5 MB)
# 260 ms whole, 238 ms in 2 chunks, 205 ms in 4; the ResNet stem's 7x7/2 at 256 px (67 MB) 79 ms
# whole, 30 ms in 8 chunks; at 128 px conv4 (7.4 MB) ran best whole (43 ms, 55 ms in 4 chunks)
# and the stem (16.8 MB) about equal (6-8 vs 5-7 ms in 2). None: always whole.
KERNEL_GRADIENT_CHUNK_BYTES = 8 * 2**20
# The same for the folded stride-2 kernel gradient (SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES),
# summed over its chunks in a loop (a scan: one chunk's temporaries live at a time). Measured alone
# (2026-11-27, Zen 5, batch 16, 256 px, best of 5): the PatchGAN's conv1 47 -> 33 ms in 8 chunks,
# conv2 126 -> 86 ms in 8, conv3 87 -> 62 ms in 4. None: always whole.
SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES = 4 * 2**20
# Stride-2 convolutions whose output (bytes, the batch's) is at least FORWARD_CHUNK_MIN_BYTES run
# their forward on CPU per batch chunk of at most FORWARD_CHUNK_BYTES of output, in a loop
# (lax.map: each chunk writes its rows of the output; the chunks as separate calls joined by a
# concatenate paid a copy of the output and lost where it is large). Measured alone (2026-11-27,
# Zen 5, batch 16, best of 5): at 256 px (outputs of 16-64 MiB) the PatchGAN's 4x4/2 conv1-3
# 34 -> 26, 97 -> 59 and 88 -> 48 ms, the ResNet stem's 7x7/2 36 -> 27 ms; ResNet's 3x3/2 convs
# (8 MiB of output at 256 px) and stride-1 convs gained nothing. In the whole step, smaller
# outputs in chunks gained nothing at 128 px (8 MiB: noise) and cost 4% at 64 px (4 MiB).
# None: always whole.
FORWARD_CHUNK_MIN_BYTES = 16 * 2**20
FORWARD_CHUNK_BYTES = 2 * 2**20
# Most output channels of a stride-1 convolution whose forward runs on CPU as
# few_output_channels_forward (the decoder's to_ab, 32 -> 2; the PatchGAN's last conv, 512 -> 1).
# Measured alone (2026-11-27, Zen 5, batch 16, best of 7): to_ab 23.6 -> 13.7 ms at 128 px, 91.5 ->
# 55.7 ms at 256 px; the PatchGAN's conv5 1.7 -> 0.2 ms and 25.2 -> 1.2 ms; with 32 output
# channels (a decoder phase conv) XLA's own was 4x faster (5.7 vs 22.5 ms at 128 px). None: off.
FORWARD_TAPS_MAX_OUT_CHANNELS = 2
# Fewest output channels for the matmul kernel gradient: with one or two (the decoder's to_ab,
# 32 -> 2; the PatchGAN's last conv, 512 -> 1) each tap's product reads the whole input to fill a
# 1-2 row result, and XLA's form was as fast or faster (256 px, batch 16: 248 vs 251 ms, 64 vs
# 88 ms).
KERNEL_GRADIENT_MIN_OUT_CHANNELS = 8
# Most output channels of a stride-1 convolution whose kernel gradient runs on CPU as
# few_output_channels_kernel_gradient (to_ab, the PatchGAN's last conv). Measured alone with to_ab's
# batch norm + ReLU producer (2026-11-27, Zen 5, batch 16, median of 9): 36 -> 25 ms at 128 px,
# 146 -> 107 ms at 256 px. None: off.
KERNEL_GRADIENT_TAPS_MAX_OUT_CHANNELS = 2

# Every float64 NHWC convolution as im2col on CPU: XLA:CPU has no fast float64 convolution (a
# generic loop; its float64 dots are a fast GEMM). The tiny config's multi-task step in float64 took
# 4.4 s with XLA's convolutions and 0.3 s as im2col (2026-11-26, 2-core CPU). float64 is what the
# equality tests compute in (tests/test_train_sharding.py, tests/test_multihost.py) and what a
# user checks numerics with. Off: XLA's convolutions (tests of the other forms pin them this way).
FLOAT64_AS_IM2COL = True

# The CPU forms above that GPUs (cuda, rocm) may take too, by name: those chosen by the layer's
# shape alone, not by sizes measured on the CPU. "space_to_depth_input_gradient": the PatchGAN's
# stride-2 input gradients as a stride-1 convolution (cuDNN's strided input gradients are often
# its slow kernels); "forward_taps" and "few_output_channels_kernel_gradient": to_ab (32 -> 2 at
# the full resolution) and the PatchGAN's last conv (512 -> 1) as matmuls with 18 or 16 columns
# instead of convolutions with one or two output channels, which cuDNN runs on generic kernels
# (session 10's H100 profile: 14 ms of 92 in such kernels). None is measured on a GPU yet, so
# GPUs keep cuDNN's forms (an empty set); benchmarks/form_ab.py's gpu_* arms time each
# (benchmarks/gpu_run.sh part conv_forms_ab), and a form joins this set where it wins.
GPU_FORM_NAMES = (
    "space_to_depth_input_gradient",
    "forward_taps",
    "few_output_channels_kernel_gradient",
)
GPU_FORMS: frozenset[str] = frozenset()

_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _on_platforms(form_name: str, form, xla, *operands):
    """``form(*operands)`` on CPU, and on GPUs where GPU_FORMS names it; ``xla(*operands)`` on
    every other backend. Chosen when the program is lowered for its platform."""
    if form_name not in GPU_FORM_NAMES:
        raise ValueError(f"not a form GPUs may take: {form_name!r} (GPU_FORM_NAMES)")
    unknown = set(GPU_FORMS) - set(GPU_FORM_NAMES)
    if unknown:
        raise ValueError(
            f"GPU_FORMS names unknown forms {sorted(unknown)}; known: {GPU_FORM_NAMES}"
        )
    gpu = form if form_name in GPU_FORMS else xla
    return jax.lax.platform_dependent(*operands, cpu=form, cuda=gpu, rocm=gpu, default=xla)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``jax.lax.conv_general_dilated`` in the forms that keep XLA:CPU on its fast path.

    A drop-in for flax's ``nn.Conv(conv_general_dilated=...)``: same parameters, same result up to
    float32 summation order. Float64 NHWC convs on CPU (FLOAT64_AS_IM2COL) and NHWC convs whose
    input map has at most SMALL_MAP_PIXELS pixels become a matmul over the kh*kw (strided) shifted
    copies of the zero-padded map (im2col); other NHWC convs with explicit padding are XLA's
    convolution, on CPU with the kernel gradient of :func:`kernel_gradient` when the kernel has at
    most KERNEL_GRADIENT_MAX_TAPS taps and with the input gradient of
    :func:`space_to_depth_input_gradient_of` when the stride is 2 and the kernel even; every other
    form goes to XLA's convolution as it is.
    """
    plain = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and dimension_numbers is not None
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_HWIO
        and not isinstance(padding, str)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
    )
    tiny_map = lhs.shape[1] * lhs.shape[2] <= SMALL_MAP_PIXELS
    if (
        plain
        and FLOAT64_AS_IM2COL
        and lhs.dtype == jnp.float64
        and preferred_element_type is None
        and _explicit_nonnegative(padding)
    ):
        args = (tuple(window_strides), tuple(map(tuple, padding)), precision)
        return jax.lax.platform_dependent(
            lhs,
            rhs,
            cpu=lambda lhs, rhs: _im2col(lhs, rhs, *args),
            default=lambda lhs, rhs: _nhwc_conv(lhs, rhs, *args),
        )
    if plain and not tiny_map and preferred_element_type is None and _explicit_nonnegative(padding):
        window_strides, padding = tuple(window_strides), tuple(map(tuple, padding))
        itemsize = jnp.result_type(lhs, rhs).itemsize
        forms = CpuForms(
            kernel_gradient=cpu_kernel_gradient_form(
                lhs.shape, rhs.shape, window_strides, padding, itemsize
            ),
            space_to_depth_input_gradient=SPACE_TO_DEPTH_INPUT_GRADIENT
            and _space_to_depth_applies(lhs.shape, rhs.shape, window_strides, padding),
            forward_chunks=cpu_forward_chunks(
                lhs.shape, rhs.shape, window_strides, padding, itemsize
            ),
            forward_taps=cpu_forward_taps(rhs.shape, window_strides),
        )
        if forms != CpuForms():
            return _conv_with_cpu_gradients(lhs, rhs, window_strides, padding, precision, forms)
    if not (plain and tiny_map):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    return _im2col(lhs, rhs, tuple(window_strides), padding, precision, preferred_element_type)


def conv_transpose(x, rhs, conv_input_shape, window_strides, padding):
    """The transpose (adjoint) in its input of the NHWC/HWIO convolution
    ``conv_general_dilated(·, rhs, window_strides, padding)`` whose input has ``conv_input_shape``,
    applied to ``x`` (shaped like that convolution's output): what ``nn.ConvTranspose(...,
    transpose_kernel=True)`` computes with ``rhs`` as its kernel (PyTorch's ConvTranspose2d with
    the same stride and padding).

    Its three products are that convolution's own, through :func:`conv_general_dilated` and so in
    the forms it picks per backend: the forward is the convolution's input gradient at ``x``, the
    input gradient is the convolution itself, and the kernel gradient is the convolution's kernel
    gradient with input and output gradient in swapped roles (the output gradient as its input,
    ``x`` as its output gradient). PyTorch computes ConvTranspose2d with the same three kernels.
    Autodiff of a transposed convolution written out (an input-dilated convolution, or output
    phases) instead differentiates that form: on CPU the decoder's ConvTranspose2d(4, 2, 1) blocks
    that take this form at 128 px, batch 16, forward + backward, took 259 ms as four phase
    convolutions each and 177 ms this way (benchmarks/decoder_upsample.py; docs/benchmarks.md).
    """
    return _conv_transpose(
        x, rhs, tuple(conv_input_shape), tuple(window_strides), tuple(map(tuple, padding))
    )


def _nhwc_names_conv(lhs, rhs, window_strides, padding):
    return conv_general_dilated(
        lhs, rhs, window_strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv_transpose_impl(x, rhs, conv_input_shape, window_strides, padding):
    # The input gradient through jax.vjp at a zero input, not jax.linear_transpose: that cannot
    # transpose the custom_vjp of conv_general_dilated's CPU forms. XLA drops the unused forward.
    _, input_gradient = jax.vjp(
        lambda lhs: _nhwc_names_conv(lhs, rhs, window_strides, padding),
        jnp.zeros(conv_input_shape, jnp.result_type(x, rhs)),
    )
    return input_gradient(x)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose(x, rhs, conv_input_shape, window_strides, padding):
    return _conv_transpose_impl(x, rhs, conv_input_shape, window_strides, padding)


def _conv_transpose_forward(x, rhs, conv_input_shape, window_strides, padding):
    return _conv_transpose_impl(x, rhs, conv_input_shape, window_strides, padding), (x, rhs)


def _conv_transpose_backward(conv_input_shape, window_strides, padding, residuals, out_grad):
    x, rhs = residuals
    # The convolution of the output gradient is the input gradient; the same call's VJP at x is
    # the kernel gradient.
    x_grad, kernel_gradient_at = jax.vjp(
        lambda w: _nhwc_names_conv(out_grad, w, window_strides, padding), rhs
    )
    return x_grad.astype(x.dtype), kernel_gradient_at(x.astype(x_grad.dtype))[0]


_conv_transpose.defvjp(_conv_transpose_forward, _conv_transpose_backward)


def _im2col(lhs, rhs, window_strides, padding, precision, preferred_element_type=None):
    """The convolution as one matmul over the kh*kw (strided) shifted copies of the padded map."""
    kh, kw, c_in, c_out = rhs.shape
    padding = tuple(map(tuple, padding))
    # (N, out_h, out_w, kh * kw * c_in), ordered like rhs.reshape(kh * kw * c_in, c_out)
    if lhs.shape[1] * lhs.shape[2] <= SMALL_MAP_PIXELS:
        columns = tiny_map_columns(lhs, (kh, kw), tuple(window_strides), padding)
    else:
        (top, bottom), (left, right) = padding
        padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
        columns = jnp.concatenate(window_taps(padded, (kh, kw), window_strides), axis=-1)
    return jnp.einsum(
        "nhwk,ko->nhwo",
        columns,
        rhs.reshape(kh * kw * c_in, c_out),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def tiny_map_columns(lhs, window_shape, window_strides, padding):
    """im2col's columns of a map of at most SMALL_MAP_PIXELS pixels, as one matmul of the map with
    the constant 0/1 matrix ``tap_selection`` (at HIGHEST precision, so every backend copies the
    values exactly: a 0/1 product loses nothing in float32 or bfloat16).

    Why a matmul rather than a slice per tap: the slices, their zero padding and, in the gradient,
    a pad and an add per tap were a small fusion each for XLA:CPU to compile, and on these maps
    compiling them cost more than running them: the CPU demo's (32 px) multi-task step compiled in
    8.6 s instead of 11.0 s in phase 2 (7.4 vs 8.7 s in phase 1) and ran as fast (130 ms). The
    product's gradient is a matmul too. One difference: a non-finite input value reaches every
    column of its channel (0 * inf is NaN), not only its own taps; a run stops on a non-finite
    loss either way."""
    n, h, w, c = lhs.shape
    out_h, out_w = _output_hw((h, w), window_shape, window_strides, padding)
    selection = tap_selection((h, w), tuple(window_shape), tuple(window_strides), padding)
    columns = jnp.einsum(
        "otp,npc->notc",
        jnp.asarray(selection, lhs.dtype),
        lhs.reshape(n, h * w, c),
        precision=jax.lax.Precision.HIGHEST,
    )
    return columns.reshape(n, out_h, out_w, selection.shape[1] * c)


@functools.cache
def tap_selection(map_hw, window_shape, window_strides, padding) -> np.ndarray:
    """S[o, t, p] = 1 where tap t (row-major in the window) of output pixel o (row-major) reads
    input pixel p of the unpadded map, 0 elsewhere (a tap on the zero padding reads nothing)."""
    (h, w), (kh, kw), (sy, sx) = map_hw, window_shape, window_strides
    (top, _), (left, _) = padding
    out_h, out_w = _output_hw(map_hw, window_shape, window_strides, padding)
    selection = np.zeros((out_h * out_w, kh * kw, h * w), np.float32)
    for oy, ox, i, j in itertools.product(range(out_h), range(out_w), range(kh), range(kw)):
        y, x = oy * sy + i - top, ox * sx + j - left
        if 0 <= y < h and 0 <= x < w:
            selection[oy * out_w + ox, i * kw + j, y * w + x] = 1.0
    return selection


def window_taps(padded, window_shape, window_strides) -> list:
    """What each tap (i, j) of a window sliding over the NHWC map ``padded`` reads, in row-major
    tap order: the strided slice ``padded[:, i::sy, j::sx]`` cut to the output map's size."""
    (kh, kw), (sy, sx) = window_shape, window_strides
    n, padded_h, padded_w, c = padded.shape
    out_h, out_w = (padded_h - kh) // sy + 1, (padded_w - kw) // sx + 1
    return [
        jax.lax.slice(
            padded,
            (0, i, j, 0),
            (n, i + sy * (out_h - 1) + 1, j + sx * (out_w - 1) + 1, c),
            (1, sy, sx, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def cpu_kernel_gradient_form(lhs_shape, rhs_shape, window_strides, padding, itemsize) -> str:
    """How the kernel gradient of a large-map NHWC convolution is computed on CPU:
    "space_to_depth" (:func:`space_to_depth_kernel_gradient_of`), "few_output_channels"
    (:func:`few_output_channels_kernel_gradient`), "matmul"
    (:func:`kernel_gradient`), "xla_in_chunks" (XLA's own per batch chunk,
    :func:`kernel_gradient_chunks`) or "xla" (XLA's own), by the measurements above."""
    out_pixels = _output_pixels(lhs_shape, rhs_shape, window_strides, padding)
    out_grad_bytes = lhs_shape[0] * out_pixels * rhs_shape[3] * itemsize
    if (
        SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES is not None
        and out_grad_bytes >= SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES
        and _space_to_depth_applies(lhs_shape, rhs_shape, window_strides, padding)
    ):
        return "space_to_depth"
    if (
        KERNEL_GRADIENT_TAPS_MAX_OUT_CHANNELS is not None
        and tuple(window_strides) == (1, 1)
        and rhs_shape[3] <= KERNEL_GRADIENT_TAPS_MAX_OUT_CHANNELS
        and all(after <= size - 1 for (_, after), size in zip(padding, rhs_shape[:2]))
    ):
        return "few_output_channels"
    if (
        out_pixels >= KERNEL_GRADIENT_MIN_OUTPUT_PIXELS
        and rhs_shape[3] >= KERNEL_GRADIENT_MIN_OUT_CHANNELS
        and rhs_shape[0] * rhs_shape[1] <= KERNEL_GRADIENT_MAX_TAPS
    ):
        return "matmul"
    if kernel_gradient_chunks(lhs_shape[0], out_grad_bytes) > 1:
        return "xla_in_chunks"
    return "xla"


def cpu_forward_chunks(lhs_shape, rhs_shape, window_strides, padding, itemsize) -> int:
    """Into how many batch chunks the forward of a large-map NHWC convolution is split on CPU: for
    stride-2 convolutions with at least FORWARD_CHUNK_MIN_BYTES of output, the fewest whose output
    is at most FORWARD_CHUNK_BYTES (1: whole)."""
    output_bytes = (
        lhs_shape[0]
        * _output_pixels(lhs_shape, rhs_shape, window_strides, padding)
        * rhs_shape[3]
        * itemsize
    )
    if (
        tuple(window_strides) != (2, 2)
        or FORWARD_CHUNK_MIN_BYTES is None
        or output_bytes < FORWARD_CHUNK_MIN_BYTES
    ):
        return 1
    return batch_chunks(lhs_shape[0], output_bytes, FORWARD_CHUNK_BYTES)


def cpu_forward_taps(rhs_shape, window_strides) -> bool:
    """Whether the forward of a large-map NHWC convolution runs on CPU as
    :func:`few_output_channels_forward`: stride 1 and at most FORWARD_TAPS_MAX_OUT_CHANNELS output
    channels."""
    return (
        FORWARD_TAPS_MAX_OUT_CHANNELS is not None
        and tuple(window_strides) == (1, 1)
        and rhs_shape[3] <= FORWARD_TAPS_MAX_OUT_CHANNELS
    )


def few_output_channels_forward(lhs, rhs, padding, precision=None):
    """A stride-1 NHWC convolution with few output channels as one matmul of every input pixel
    with all kh*kw kernel taps (a pixel's kh*kw*c_out products, summed over c_in), then the sum
    of the taps' maps, each shifted by its offset in the window.

    XLA:CPU ran these convolutions at about 11 GFLOP/s (a 1-2 column GEMM per window): the
    decoder's to_ab (3x3, 32 -> 2) at 128 px, batch 16, 23.6 ms against 13.7 ms this way, the
    PatchGAN's last conv (4x4, 512 -> 1) 25.2 ms against 1.2 ms at 256 px (three calls a step).
    The matmul reads the input once; the taps' maps have kh*kw*c_out channels (18 and 16 here), so
    the sum reads far less than the input. Sums in at least float32, rounds once."""
    kh, kw, c_in, c_out = rhs.shape
    accumulate = jnp.promote_types(jnp.result_type(lhs, rhs), jnp.float32)
    taps = jnp.einsum(
        "nhwc,cto->nhwto",
        lhs,
        rhs.transpose(2, 0, 1, 3).reshape(c_in, kh * kw, c_out),
        precision=precision,
        preferred_element_type=accumulate,
    )
    padded = jnp.pad(taps, ((0, 0), *padding, (0, 0), (0, 0)))
    out_h, out_w = _output_hw(lhs.shape[1:3], (kh, kw), (1, 1), padding)
    # Output pixel (y, x) reads padded input pixel (y + i, x + j) through tap (i, j).
    out = sum(
        padded[:, i : i + out_h, j : j + out_w, i * kw + j]
        for i, j in itertools.product(range(kh), range(kw))
    )
    return out.astype(jnp.result_type(lhs, rhs))


def few_output_channels_kernel_gradient(lhs, out_grad, kernel_shape, padding, precision=None):
    """The kernel gradient of a stride-1 NHWC convolution with few output channels: each image's
    input (pixels x c_in) against its output gradient shifted to every kernel tap (pixels x
    kh*kw*c_out), summed over the images in a scan.

    Tap (i, j) of the kernel gradient is the sum over input pixels u of ``lhs[u]`` times the output
    gradient at the output pixel that reads u through that tap, ``out_grad[u + pad - (i, j)]``
    (zero off the map). The shifted copies of the output gradient have kh*kw*c_out channels (18 for
    to_ab), so they are cheap; XLA:CPU's own kernel gradient transposed the whole input to
    channel-major first (at 128 px, batch 16, the decoder's to_ab: a 34 ms copy, then a 14 ms
    generic convolution). Per image, in a scan, both operands of each product stay in cache (the
    whole batch at once ran 33 ms alone against the scan's 25). Sums in at least float32.
    """
    kh, kw, c_in, c_out = kernel_shape
    n, h, w, _ = lhs.shape
    (top, bottom), (left, right) = padding
    # Placed so that rows [top + kh - 1 - i, + h) read out_grad[u + top - i] for u in [0, h).
    placed = jnp.pad(
        out_grad, ((0, 0), (kh - 1, kh - 1 - bottom), (kw - 1, kw - 1 - right), (0, 0))
    )
    accumulate = jnp.promote_types(jnp.result_type(lhs, out_grad), jnp.float32)

    def image_gradient(total, image):
        pixels, placed_image = image
        shifted = jnp.concatenate(
            [
                placed_image[top + kh - 1 - i : top + kh - 1 - i + h, left + kw - 1 - j :][:, :w]
                for i, j in itertools.product(range(kh), range(kw))
            ],
            axis=-1,
        )
        return total + jnp.dot(
            pixels.reshape(h * w, c_in).T,
            shifted.reshape(h * w, kh * kw * c_out),
            precision=precision,
            preferred_element_type=accumulate,
        ), None

    total, _ = jax.lax.scan(
        image_gradient, jnp.zeros((c_in, kh * kw * c_out), accumulate), (lhs, placed)
    )
    return total.reshape(c_in, kh, kw, c_out).transpose(1, 2, 0, 3)


def kernel_gradient_chunks(batch: int, out_grad_bytes: int) -> int:
    """Into how many equal batch chunks XLA's own kernel gradient is split on CPU: the fewest whose
    output gradient is at most KERNEL_GRADIENT_CHUNK_BYTES (1: whole)."""
    return batch_chunks(batch, out_grad_bytes, KERNEL_GRADIENT_CHUNK_BYTES)


def batch_chunks(batch: int, total_bytes: int, chunk_bytes: int | None) -> int:
    """The fewest equal chunks of ``batch`` rows holding at most ``chunk_bytes`` of ``total_bytes``
    each (one row each if none does; 1 if ``chunk_bytes`` is None)."""
    if chunk_bytes is None:
        return 1
    for chunks in range(1, batch + 1):
        if batch % chunks == 0 and total_bytes // chunks <= chunk_bytes:
            return chunks
    return batch


def _output_hw(map_hw, window_shape, window_strides, padding) -> tuple[int, int]:
    return tuple(
        (size + before + after - window) // stride + 1
        for size, window, stride, (before, after) in zip(
            map_hw, window_shape, window_strides, padding
        )
    )


def _output_pixels(lhs_shape, rhs_shape, window_strides, padding) -> int:
    out_h, out_w = _output_hw(lhs_shape[1:3], rhs_shape[:2], window_strides, padding)
    return out_h * out_w


def _explicit_nonnegative(padding) -> bool:
    return all(len(pair) == 2 and min(pair) >= 0 for pair in padding)


def _nhwc_conv(lhs, rhs, window_strides, padding, precision):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, dimension_numbers=_NHWC_HWIO, precision=precision
    )


@dataclasses.dataclass(frozen=True)
class CpuForms:
    """How one convolution runs on CPU where it differs from XLA's own (the default values);
    other backends run XLA's own, but for the forms GPU_FORMS names."""

    # "xla", "matmul" (kernel_gradient), "space_to_depth" (space_to_depth_kernel_gradient_of, in
    # SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES chunks), "few_output_channels"
    # (few_output_channels_kernel_gradient) or "xla_in_chunks" (kernel_gradient_chunks)
    kernel_gradient: str = "xla"
    space_to_depth_input_gradient: bool = False  # space_to_depth_input_gradient_of
    forward_chunks: int = 1  # the forward per batch chunk, in a loop (cpu_forward_chunks)
    forward_taps: bool = False  # the forward as few_output_channels_forward (cpu_forward_taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_with_cpu_gradients(lhs, rhs, window_strides, padding, precision, forms: CpuForms):
    """XLA's NHWC convolution with, on CPU, the forward and gradient forms ``forms`` names; XLA's
    own on other backends."""
    return _forward(lhs, rhs, window_strides, padding, precision, forms)


def _forward(lhs, rhs, window_strides, padding, precision, forms: CpuForms):
    def whole(lhs, rhs):
        return _nhwc_conv(lhs, rhs, window_strides, padding, precision)

    def in_chunks(lhs, rhs):
        chunked = lhs.reshape(forms.forward_chunks, -1, *lhs.shape[1:])
        out = jax.lax.map(lambda part: whole(part, rhs), chunked)
        return out.reshape(-1, *out.shape[2:])

    def taps(lhs, rhs):
        return few_output_channels_forward(lhs, rhs, padding, precision)

    if forms.forward_taps:
        return _on_platforms("forward_taps", taps, whole, lhs, rhs)
    if forms.forward_chunks > 1:
        return jax.lax.platform_dependent(lhs, rhs, cpu=in_chunks, default=whole)
    return whole(lhs, rhs)


def _conv_forward(lhs, rhs, window_strides, padding, precision, forms):
    return _forward(lhs, rhs, window_strides, padding, precision, forms), (lhs, rhs)


def _conv_backward(window_strides, padding, precision, forms, residuals, out_grad):
    lhs, rhs = residuals

    def xla_input_gradient(rhs, out_grad):
        return jax.linear_transpose(
            lambda x: _nhwc_conv(x, rhs, window_strides, padding, precision), lhs
        )(out_grad)[0]

    def xla_kernel_gradient(lhs, out_grad):
        return jax.linear_transpose(
            lambda w: _nhwc_conv(lhs, w, window_strides, padding, precision), rhs
        )(out_grad)[0]

    def space_to_depth_form(rhs, out_grad):
        grad = space_to_depth_input_gradient_of(out_grad, rhs, lhs.shape, padding, precision)
        return grad.astype(lhs.dtype)

    def cpu_form(lhs, out_grad):
        if forms.kernel_gradient == "space_to_depth":
            chunks = batch_chunks(
                lhs.shape[0],
                out_grad.size * out_grad.dtype.itemsize,
                SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES,
            )

            def chunk_gradient(total, chunk):
                lhs_part, out_grad_part = chunk
                return total + space_to_depth_kernel_gradient_of(
                    lhs_part, out_grad_part, rhs.shape, padding, precision
                ), None

            # A scan, not one call per chunk: XLA:CPU keeps these matmuls on its fast path inside
            # a loop (not its own convolution gradients, which slowed 100x there, measured).
            grad, _ = jax.lax.scan(
                chunk_gradient,
                jnp.zeros(rhs.shape, jnp.promote_types(rhs.dtype, jnp.float32)),
                (
                    lhs.reshape(chunks, -1, *lhs.shape[1:]),
                    out_grad.reshape(chunks, -1, *out_grad.shape[1:]),
                ),
            )
        elif forms.kernel_gradient == "xla_in_chunks":
            chunks = kernel_gradient_chunks(lhs.shape[0], out_grad.size * out_grad.dtype.itemsize)
            size = lhs.shape[0] // chunks
            grad = sum(
                xla_kernel_gradient(
                    lhs[i * size : (i + 1) * size], out_grad[i * size : (i + 1) * size]
                )
                for i in range(chunks)
            )
        elif forms.kernel_gradient == "few_output_channels":
            grad = few_output_channels_kernel_gradient(lhs, out_grad, rhs.shape, padding, precision)
        else:
            grad = kernel_gradient(lhs, out_grad, rhs.shape, window_strides, padding, precision)
        return grad.astype(rhs.dtype)

    if forms.space_to_depth_input_gradient:
        lhs_grad = _on_platforms(
            "space_to_depth_input_gradient",
            space_to_depth_form,
            xla_input_gradient,
            rhs,
            out_grad,
        )
    else:
        lhs_grad = xla_input_gradient(rhs, out_grad)
    if forms.kernel_gradient == "few_output_channels":
        rhs_grad = _on_platforms(
            "few_output_channels_kernel_gradient", cpu_form, xla_kernel_gradient, lhs, out_grad
        )
    elif forms.kernel_gradient != "xla":
        rhs_grad = jax.lax.platform_dependent(
            lhs, out_grad, cpu=cpu_form, default=xla_kernel_gradient
        )
    else:
        rhs_grad = xla_kernel_gradient(lhs, out_grad)
    return lhs_grad, rhs_grad


_conv_with_cpu_gradients.defvjp(_conv_forward, _conv_backward)


def _space_to_depth_applies(lhs_shape, rhs_shape, window_strides, padding) -> bool:
    """A stride-2 convolution with an even kernel over an even padded map (the PatchGAN's 4x4/2
    convs): its gradients have the stride-1 forms of :func:`space_to_depth_input_gradient_of` and
    :func:`space_to_depth_kernel_gradient_of`."""
    (top, bottom), (left, right) = padding
    return (
        window_strides == (2, 2)
        and rhs_shape[0] % 2 == 0
        and rhs_shape[1] % 2 == 0
        and (lhs_shape[1] + top + bottom) % 2 == 0
        and (lhs_shape[2] + left + right) % 2 == 0
    )


def _space_to_depth(x):
    """(N, 2H, 2W, C) -> (N, H, W, 4C): pixel (2i + p, 2j + q) to (i, j), channels (p, q, c)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


def space_to_depth_input_gradient_of(out_grad, rhs, input_shape, padding, precision=None):
    """The input gradient of a stride-2 NHWC/HWIO convolution with an even kernel, as the transpose
    of the equal stride-1 convolution over the space-to-depth padded input.

    With k = 2a + p, y[o] = sum_k padded[2o + k] w[k] = sum_(a, p) S[o + a, p] w[2a + p], where
    S[i, p] = padded[2i + p] is the space-to-depth map: a stride-1 (kh/2 x kw/2) convolution with
    4x the input channels. XLA transposes the stride-2 convolution into one over the output
    gradient dilated with zeros, which XLA:CPU runs off its convolution library (the PatchGAN's
    4x4/2 conv 64 -> 128 at 128 px, batch 16: 49 ms); the stride-1 form's transpose is a plain
    convolution (13 ms). Same FLOPs; the reshapes are one copy of the gradient.
    """
    folded_kernel = _fold_kernel(rhs)

    def stride_one_form(lhs):
        padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
        return _nhwc_conv(
            _space_to_depth(padded), folded_kernel, (1, 1), ((0, 0), (0, 0)), precision
        )

    primal = jax.ShapeDtypeStruct(input_shape, jnp.result_type(out_grad, rhs))
    return jax.linear_transpose(stride_one_form, primal)(out_grad)[0]


def _fold_kernel(rhs):
    """(kh, kw, c_in, c_out) -> (kh/2, kw/2, 4 c_in, c_out): tap (2a + p, 2b + q) to (a, b), input
    channels (p, q, c), matching :func:`_space_to_depth`."""
    kh, kw, c_in, c_out = rhs.shape
    folded = rhs.reshape(kh // 2, 2, kw // 2, 2, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
    return folded.reshape(kh // 2, kw // 2, 4 * c_in, c_out)


def _unfold_kernel(folded, kernel_shape):
    """The inverse of :func:`_fold_kernel`."""
    kh, kw, c_in, c_out = kernel_shape
    unfolded = folded.reshape(kh // 2, kw // 2, 2, 2, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
    return unfolded.reshape(kernel_shape)


def space_to_depth_kernel_gradient_of(lhs, out_grad, kernel_shape, padding, precision=None):
    """The kernel gradient of a stride-2 NHWC/HWIO convolution with an even kernel, as the matmul
    kernel gradient (:func:`kernel_gradient`) of the equal stride-1 convolution over the
    space-to-depth padded input (see :func:`space_to_depth_input_gradient_of`), folded back.

    The folded kernel has a quarter of the taps and four times the input channels, so the matmuls
    are few and wide: four for the PatchGAN's 4x4/2 convs, each copying the output gradient placed
    at its tap (c_out < 4 c_in) or a slice of the space-to-depth input. Same FLOPs as XLA's own;
    one copy of the input for the space-to-depth map.
    """
    kh, kw, c_in, c_out = kernel_shape
    padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    folded = kernel_gradient(
        _space_to_depth(padded),
        out_grad,
        (kh // 2, kw // 2, 4 * c_in, c_out),
        (1, 1),
        ((0, 0), (0, 0)),
        precision,
    )
    return _unfold_kernel(folded, kernel_shape)


def kernel_gradient(lhs, out_grad, kernel_shape, window_strides, padding, precision=None):
    """The gradient of an NHWC/HWIO convolution's kernel, as one matmul per kernel tap.

    Tap (i, j) of the kernel gradient is the sum over output pixels (n, y, x) of the input pixel
    that tap reads, ``padded[n, i + sy * y, j + sx * x, :]``, times ``out_grad[n, y, x, :]``: a
    (c_out, P) x (P, c_in) product. One of its operands is a copy made per tap, and copies, not
    products, are what these cost most (a 256 px multi-task step: 3.2 s of slices, 1.6 s of dots),
    so the copy is of the side with fewer channels:

      * the input's pixels each tap reads, a strided slice of the padded input (P = the output
        pixels), when c_in <= c_out or the stride is not 1;
      * else (stride 1, c_out < c_in: the decoder's last phase convs, 64 -> 32) the output
        gradient placed at offset (i, j) on a zero map the size of the padded input, against the
        padded input itself (P = its pixels): at 256 px 0.19 s against 0.27 s for slices of the
        input and 1.62 s for XLA's kernel gradient.

    Both operands stay pixel-major, the layout XLA:CPU's dot reads without a transposing copy
    (profiled: a channel-major operand made XLA fuse a slow element-wise transpose into every
    slice). Accumulates in at least float32; returns (kh, kw, c_in, c_out).
    """
    kh, kw, c_in, c_out = kernel_shape
    n, out_h, out_w, _ = out_grad.shape
    sy, sx = window_strides
    padded = jnp.pad(lhs, ((0, 0), padding[0], padding[1], (0, 0)))
    accumulate = jnp.promote_types(jnp.result_type(lhs, out_grad), jnp.float32)

    def product(pixels_by_out_channel, pixels_by_in_channel):
        return jnp.dot(
            pixels_by_out_channel.T,
            pixels_by_in_channel,
            precision=precision,
            preferred_element_type=accumulate,
        )

    taps = []
    if (sy, sx) == (1, 1) and c_out < c_in:
        _, padded_h, padded_w, _ = padded.shape  # out_h + kh - 1, out_w + kw - 1
        input_pixels = padded.reshape(-1, c_in)
        for i in range(kh):
            for j in range(kw):
                placed = jnp.pad(
                    out_grad, ((0, 0), (i, padded_h - out_h - i), (j, padded_w - out_w - j), (0, 0))
                )
                taps.append(product(placed.reshape(-1, c_out), input_pixels))
    else:
        out_pixels = out_grad.reshape(-1, c_out)
        for reads in window_taps(padded, (kh, kw), (sy, sx)):
            taps.append(product(out_pixels, reads.reshape(-1, c_in)))
    return jnp.stack(taps).reshape(kh, kw, c_out, c_in).transpose(0, 1, 3, 2)
