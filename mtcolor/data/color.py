"""sRGB <-> CIELAB (D65, 2-degree observer) in numpy and in JAX, and the paper's Lab normalization.

The definition is the one of `skimage.color.rgb2lab` / `lab2rgb` (which the paper's reference
tutorial uses), including its constants (0.008856 and 7.787 rather than the exact 216/24389 and
841/108, and the clamp of the z term at 0 in Lab -> XYZ), so models trained here see the same
targets as models trained with the tutorial's code.

numpy functions compute in float32 (the input pipeline's path, fast and accurate to ~1e-4 Lab
units); pass float64 input to `rgb_to_lab` / `lab_to_rgb` for a float64 computation.
`rgb_uint8_to_lab_normalized` is the pipeline's fused fast path: a 256-entry sRGB->linear lookup
table replaces the per-pixel power function for uint8 images.

JAX functions are for on-device visualization and metrics; they are NaN-free for any Lab input
(out-of-gamut generator predictions included), and so are their gradients.
"""

from __future__ import annotations

import numpy as np

# sRGB (linear) -> XYZ, the matrix skimage uses (sRGB specification values).
XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
# D65 white point, 2-degree observer.
D65_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)

# Lab normalization of the paper / tutorial: L in [0, 100] -> [-1, 1]; ab / 110 keeps every sRGB
# colour (a in about [-86, 98], b in about [-108, 95]) inside [-1, 1].
L_SCALE = 50.0
AB_SCALE = 110.0

_LAB_EPSILON = 0.008856  # skimage's threshold on X/Xn (CIE: 216/24389)
_LAB_KAPPA_SLOPE = 7.787  # skimage's slope of the linear segment (CIE: 841/108)
_LAB_F_THRESHOLD = 0.2068966  # cube root of _LAB_EPSILON, used in the inverse

# Rows of XYZ_FROM_RGB divided by the white point: linear RGB -> X/Xn, Y/Yn, Z/Zn in one product.
_NORMALIZED_XYZ_FROM_RGB = XYZ_FROM_RGB / D65_WHITE[:, None]
_RGB_FROM_NORMALIZED_XYZ = RGB_FROM_XYZ * D65_WHITE[None, :]


def _srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def _linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    # Negative values take the linear branch, so the power never sees a negative base.
    safe = np.maximum(linear, 0.0031308)
    return np.where(linear > 0.0031308, 1.055 * safe ** (1 / 2.4) - 0.055, linear * 12.92)


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _LAB_EPSILON, np.cbrt(t), _LAB_KAPPA_SLOPE * t + 16.0 / 116.0)


def _f_inverse(f: np.ndarray) -> np.ndarray:
    return np.where(f > _LAB_F_THRESHOLD, f * f * f, (f - 16.0 / 116.0) / _LAB_KAPPA_SLOPE)


def _working_dtype(x: np.ndarray) -> np.dtype:
    return np.float64 if x.dtype == np.float64 else np.float32


def _linear_rgb_to_lab(linear: np.ndarray, dtype: np.dtype) -> np.ndarray:
    xyz = linear @ _NORMALIZED_XYZ_FROM_RGB.T.astype(dtype)
    f = _f(xyz)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1).astype(
        dtype
    )


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> Lab (..., 3): L in [0, 100], a/b roughly [-110, 110].

    uint8 input is scaled by 1/255. Computes in float32 unless the input is float64.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) RGB, got shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        return _linear_rgb_to_lab(SRGB_UINT8_TO_LINEAR[rgb], np.float32)
    dtype = _working_dtype(rgb)
    return _linear_rgb_to_lab(_srgb_to_linear(rgb.astype(dtype, copy=False)), dtype)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Lab (..., 3) -> sRGB in [0, 1]. Out-of-gamut colours are clipped (never NaN)."""
    lab = np.asarray(lab)
    if lab.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) Lab, got shape {lab.shape}")
    dtype = _working_dtype(lab)
    lab = lab.astype(dtype, copy=False)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    # skimage clamps the z term at 0 (a very large b would otherwise give negative Z).
    fz = np.maximum(fy - lab[..., 2] / 200.0, 0.0)
    xyz = _f_inverse(np.stack([fx, fy, fz], axis=-1))
    linear = xyz @ _RGB_FROM_NORMALIZED_XYZ.T.astype(dtype)
    return np.clip(_linear_to_srgb(linear), 0.0, 1.0).astype(dtype)


# sRGB decoding of every uint8 value: replaces a per-pixel power function with one gather.
SRGB_UINT8_TO_LINEAR = _srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


# Lab is linear in f = (f(X/Xn), f(Y/Yn), f(Z/Zn)):
# normalized Lab = f @ _NORMALIZED_LAB_FROM_F + offset.
_NORMALIZED_LAB_FROM_F = np.array(
    [
        [0.0, 500.0 / AB_SCALE, 0.0],
        [116.0 / L_SCALE, -500.0 / AB_SCALE, 200.0 / AB_SCALE],
        [0.0, 0.0, -200.0 / AB_SCALE],
    ],
    dtype=np.float32,
)
_NORMALIZED_LAB_OFFSET = np.array([-16.0 / L_SCALE - 1.0, 0.0, 0.0], dtype=np.float32)
_NORMALIZED_XYZ_FROM_RGB_F32 = _NORMALIZED_XYZ_FROM_RGB.T.astype(np.float32)


def _uint8_to_f(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8:
        raise TypeError(f"expected uint8 RGB, got {rgb.dtype}")
    xyz = np.take(SRGB_UINT8_TO_LINEAR, rgb) @ _NORMALIZED_XYZ_FROM_RGB_F32
    f = np.cbrt(xyz)
    dark = xyz <= _LAB_EPSILON
    if dark.any():  # the linear segment only where needed (dark pixels)
        f[dark] = xyz[dark] * np.float32(_LAB_KAPPA_SLOPE) + np.float32(16.0 / 116.0)
    return f


def rgb_uint8_to_lab_normalized(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> normalized Lab (..., 3) float32: [L/50 - 1, a/110, b/110].

    The pipeline's fast path (about 3x skimage.color.rgb2lab per image, see docs/benchmarks.md):
    lookup-table linearization, white point folded into the matrix, and Lab plus its
    normalization as one more 3x3 product.
    """
    out = _uint8_to_f(rgb) @ _NORMALIZED_LAB_FROM_F
    out += _NORMALIZED_LAB_OFFSET
    return out


def rgb_uint8_to_normalized_L_ab(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
    """uint8 RGB (..., 3) -> (L/50 - 1 (..., 1), ab/110 (..., 2)), each contiguous float32.

    What the pipeline stores per element: batching then is a plain stack, no strided copies.
    """
    f = _uint8_to_f(rgb)
    L_norm = f[..., 1:2] * np.float32(116.0 / L_SCALE)  # noqa: N806
    L_norm += _NORMALIZED_LAB_OFFSET[0]
    ab_norm = f @ _NORMALIZED_LAB_FROM_F[:, 1:]
    return L_norm, ab_norm


def normalize_L(L):  # noqa: N802, N803 (L is the channel's name)
    """Lightness L in [0, 100] (any shape, float) -> L/50 - 1, the model's input in [-1, 1].

    Works on numpy and jax arrays alike (only arithmetic).
    """
    return L / L_SCALE - 1.0


def normalize_lab(lab):
    """Lab (..., 3) -> (L_norm (..., 1), ab_norm (..., 2)) with L/50 - 1 and ab/110.

    Works on numpy and jax arrays alike (only slicing and arithmetic).
    """
    return normalize_L(lab[..., :1]), lab[..., 1:] / AB_SCALE


def denormalize_lab(L_norm, ab_norm):  # noqa: N803 (L is the channel's name)
    """Inverse of `normalize_lab`: (L_norm (..., 1), ab_norm (..., 2)) -> Lab (..., 3)."""
    if isinstance(L_norm, np.ndarray) and isinstance(ab_norm, np.ndarray):
        return np.concatenate([(L_norm + 1.0) * L_SCALE, ab_norm * AB_SCALE], axis=-1)
    import jax.numpy as jnp

    return jnp.concatenate([(L_norm + 1.0) * L_SCALE, ab_norm * AB_SCALE], axis=-1)


def lab_norm_to_rgb(L_norm, ab_norm) -> np.ndarray:  # noqa: N803
    """Normalized (L (..., 1), ab (..., 2)) -> sRGB in [0, 1] (..., 3) float32, on the host: for
    pictures (image grids, report figures), where eager jnp would compile a program per op."""
    L_norm, ab_norm = np.asarray(L_norm, np.float32), np.asarray(ab_norm, np.float32)
    return lab_to_rgb(denormalize_lab(L_norm, ab_norm))


# ----------------------------------------------------------------------------------------------
# JAX versions. jax is imported inside the functions so that worker processes (numpy only) and
# `import mtcolor.data` never load it.


def rgb_to_lab_jax(rgb):
    """sRGB in [0, 1] (..., 3) -> Lab (..., 3) with jnp; the same definition as `rgb_to_lab`."""
    import jax.numpy as jnp

    rgb = jnp.asarray(rgb)
    # Clamp the base of the power so neither the value nor the gradient of the unused branch is NaN.
    srgb_safe = jnp.maximum(rgb, 0.04045)
    linear = jnp.where(rgb > 0.04045, ((srgb_safe + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ jnp.asarray(_NORMALIZED_XYZ_FROM_RGB.T, dtype=linear.dtype)
    xyz_safe = jnp.maximum(xyz, _LAB_EPSILON)
    f = jnp.where(xyz > _LAB_EPSILON, jnp.cbrt(xyz_safe), _LAB_KAPPA_SLOPE * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _lab_to_f_jax(L, a, b):  # noqa: N803
    """(f(X/Xn), f(Y/Yn), f(Z/Zn)) of Lab components, with skimage's clamp of the z term at 0."""
    import jax.numpy as jnp

    fy = (L + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = jnp.maximum(fy - b / 200.0, 0.0)
    return fx, fy, fz


def _f_inverse_jax(f):
    import jax.numpy as jnp

    return jnp.where(f > _LAB_F_THRESHOLD, f * f * f, (f - 16.0 / 116.0) / _LAB_KAPPA_SLOPE)


def lab_to_rgb_jax(lab):
    """Lab (..., 3) -> sRGB in [0, 1] with jnp; clipped, never NaN (values or gradients)."""
    import jax.numpy as jnp

    lab = jnp.asarray(lab)
    f = jnp.stack(_lab_to_f_jax(lab[..., 0], lab[..., 1], lab[..., 2]), axis=-1)
    xyz = _f_inverse_jax(f)
    linear = xyz @ jnp.asarray(_RGB_FROM_NORMALIZED_XYZ.T, dtype=xyz.dtype)
    linear_safe = jnp.maximum(linear, 0.0031308)
    srgb = jnp.where(linear > 0.0031308, 1.055 * linear_safe ** (1 / 2.4) - 0.055, linear * 12.92)
    return jnp.clip(srgb, 0.0, 1.0)


def lab_in_srgb_gamut_jax(L, a, b, slack: float = 0.0):  # noqa: N803
    """Whether Lab, as separate components (L, a, b of one shape), lies inside the sRGB gamut:
    its linear RGB within [-slack, 1 + slack], so `lab_to_rgb_jax` would not clip it.

    The same Lab -> linear RGB as `lab_to_rgb_jax`, written out per component (no (P, 3) @ (3, 3)
    product, which XLA:CPU runs slowly), for callers that test many candidates per pixel.
    """
    xyz = [_f_inverse_jax(f) for f in _lab_to_f_jax(L, a, b)]
    inside = None
    for row in _RGB_FROM_NORMALIZED_XYZ:
        channel = float(row[0]) * xyz[0] + float(row[1]) * xyz[1] + float(row[2]) * xyz[2]
        ok = (channel >= -slack) & (channel <= 1.0 + slack)
        inside = ok if inside is None else inside & ok
    return inside


def lab_norm_to_rgb_jax(L_norm, ab_norm):  # noqa: N803
    """Normalized (L (..., 1), ab (..., 2)) -> sRGB in [0, 1] (..., 3), for images and metrics."""
    import jax.numpy as jnp

    lab = jnp.concatenate([(L_norm + 1.0) * L_SCALE, ab_norm * AB_SCALE], axis=-1)
    return lab_to_rgb_jax(lab)


def rgb_uint8_to_normalized_L_ab_jax(rgb):  # noqa: N802
    """uint8 RGB (..., 3) -> (L/50 - 1 (..., 1), ab/110 (..., 2)) float32 with jnp, on device.

    The same computation as `rgb_uint8_to_normalized_L_ab` (lookup-table linearization, skimage's
    constants). The 3x3 products are written as multiply-adds rather than matmuls: an f32 matmul
    may run at reduced precision on accelerators (TF32 / bf16 passes), elementwise f32 never does,
    so the result matches the numpy path within 1e-4 on any backend.
    """
    import jax.numpy as jnp

    linear = jnp.asarray(SRGB_UINT8_TO_LINEAR)[rgb.astype(jnp.int32)]
    r, g, b = linear[..., 0], linear[..., 1], linear[..., 2]
    m = _NORMALIZED_XYZ_FROM_RGB_F32.T  # rows: X/Xn, Y/Yn, Z/Zn
    xyz = [r * m[i, 0] + g * m[i, 1] + b * m[i, 2] for i in range(3)]
    fx, fy, fz = (
        jnp.where(
            t > _LAB_EPSILON,
            jnp.cbrt(t),
            t * np.float32(_LAB_KAPPA_SLOPE) + np.float32(16.0 / 116.0),
        )
        for t in xyz
    )
    L_norm = fy * np.float32(116.0 / L_SCALE) + _NORMALIZED_LAB_OFFSET[0]  # noqa: N806
    a_norm = (fx - fy) * np.float32(500.0 / AB_SCALE)
    b_norm = (fy - fz) * np.float32(200.0 / AB_SCALE)
    return L_norm[..., None], jnp.stack([a_norm, b_norm], axis=-1)
