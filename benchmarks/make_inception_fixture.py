"""Golden outputs of pytorch-fid's FID Inception-v3 for tests/test_eval_inception.py (run once,
with torch).

    # from the repository root, in an environment with torch
    python benchmarks/make_inception_fixture.py

Builds pytorch-fid's architecture exactly as `pytorch_fid.inception.fid_inception_v3()` does
(torchvision Inception3 with num_classes=1008, no aux head, the FIDInceptionA/C/E_1/E_2 blocks),
but with weights drawn from a numpy seed instead of the downloaded file (nothing is downloaded),
and runs pytorch-fid's own `InceptionV3([3])` forward (bilinear resize to 299, 2x - 1, blocks,
adaptive average pool) on two small seeded images. The weights are not stored: the test draws
them again from the same seed with `random_state_dict` (pure numpy) and checks their checksum.

Writes tests/fixtures/inception_golden.npz:
  keys, shapes_flat, ndims   torch's state-dict key order and shapes (what the draw iterates over)
  weights_checksum           float64 sum of |w| over all drawn floats, to catch a drifted draw
  images                     (2, 40, 56, 3) float32 RGB in [0, 1], NHWC (torch gets NCHW)
  features                   (2, 2048) float32 pool3 features from pytorch-fid
  features_downsampled       (1, 2048) pool3 features of `large_image()` (400x360, not stored: the
                             test draws it again), which pytorch-fid shrinks to 299 without
                             antialias
  param_count                trainable parameters without fc (also printed per block)
  legacy_pth                 bytes of a small torch.save(..., _use_new_zipfile_serialization=False)
                             file (the pre-1.6 format the 2019 FID weights file may be in): strided
                             views, a shared storage, float16 and an int64 counter
  legacy_expected__<name>    torch's values of each of its tensors
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SEED = 20151205
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "inception_golden.npz"


def random_state_dict(keys, shapes, seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for every key (pure numpy; the test calls this too).

    He-scaled conv kernels and BN statistics near identity keep activations O(1) through the 94
    conv+BN+ReLU layers, so the comparison is on meaningful magnitudes. Running variances are
    positive. Integer counters (num_batches_tracked) are zeros.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in zip(keys, shapes):
        shape = tuple(int(s) for s in shape)
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, np.int64)
        elif key.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif key.endswith("bn.weight"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:  # fc.weight, fc.bias
            state[key] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    return state


def large_image() -> np.ndarray:
    """(1, 400, 360, 3) float32 in [0, 1]: exercises the downsampling resize."""
    return np.random.default_rng(SEED + 2).uniform(0.0, 1.0, (1, 400, 360, 3)).astype(np.float32)


def weights_checksum(state) -> float:
    return float(
        sum(np.abs(v.astype(np.float64)).sum() for v in state.values() if v.dtype == np.float32)
    )


def legacy_example_tensors(torch):
    g = torch.Generator().manual_seed(SEED)
    base = torch.randn(5, 6, generator=g)
    return {
        "Mixed_5b.branch1x1.conv.weight": torch.randn(4, 3, 1, 1, generator=g),
        "strided_view": base[1:4, 2:6].t(),  # non-zero storage offset, transposed strides
        "same_storage": base[0],  # a second tensor on the same storage
        "half": torch.randn(3, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }


def main():
    import pytorch_fid.inception as pfi
    import torch

    torch.manual_seed(0)

    def fid_inception_without_download():
        # pytorch_fid.inception.fid_inception_v3() minus its load_state_dict_from_url.
        inception = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        inception.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
        inception.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
        inception.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
        inception.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
        inception.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
        inception.Mixed_7b = pfi.FIDInceptionE_1(1280)
        inception.Mixed_7c = pfi.FIDInceptionE_2(2048)
        reference = inception.state_dict()
        keys = list(reference)
        shapes = [tuple(t.shape) for t in reference.values()]
        drawn = random_state_dict(keys, shapes)
        inception.load_state_dict({k: torch.from_numpy(v) for k, v in drawn.items()}, strict=True)
        fid_inception_without_download.drawn = (keys, shapes, drawn)
        return inception

    pfi.fid_inception_v3 = fid_inception_without_download  # InceptionV3() looks it up at call time
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    keys, shapes, drawn = fid_inception_without_download.drawn

    images = np.random.default_rng(SEED + 1).uniform(0.0, 1.0, (2, 40, 56, 3)).astype(np.float32)
    with torch.no_grad():
        (pool3,) = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        (pool3_large,) = model(torch.from_numpy(large_image()).permute(0, 3, 1, 2).contiguous())
    features = pool3[:, :, 0, 0].numpy().astype(np.float32)
    features_downsampled = pool3_large[:, :, 0, 0].numpy().astype(np.float32)

    inception = fid_inception_without_download()
    per_block: dict[str, int] = {}
    for name, p in inception.named_parameters():
        block = name.split(".")[0]
        if block != "fc":
            per_block[block] = per_block.get(block, 0) + p.numel()
    for block, count in per_block.items():
        print(f"  {block:16s} {count:>12,d}")
    param_count = sum(per_block.values())
    print(f"  {'total (no fc)':16s} {param_count:>12,d}")

    legacy_tensors = legacy_example_tensors(torch)
    buffer = io.BytesIO()
    torch.save(legacy_tensors, buffer, _use_new_zipfile_serialization=False)
    legacy = {f"legacy_expected__{k}": t.numpy().copy() for k, t in legacy_tensors.items()}

    np.savez_compressed(
        OUT,
        legacy_pth=np.frombuffer(buffer.getvalue(), np.uint8),
        **legacy,
        keys=np.array(keys),
        shapes_flat=np.array([s for shape in shapes for s in shape], np.int64),
        ndims=np.array([len(s) for s in shapes], np.int64),
        weights_checksum=weights_checksum(drawn),
        images=images,
        features=features,
        features_downsampled=features_downsampled,
        param_count=np.int64(param_count),
    )
    print(
        f"wrote {OUT} ({OUT.stat().st_size} bytes); features mean {features.mean():.4f}, "
        f"std {features.std():.4f}, max {features.max():.4f}"
    )


if __name__ == "__main__":
    main()
