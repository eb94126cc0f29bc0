"""Write the small torch-made fixtures for tests/test_weights.py (run once, with torch installed).

    python benchmarks/make_weight_fixtures.py [--legacy-only]   # from the repository root

`--legacy-only` rewrites just torch_legacy.pth, after checking that the seeded tensors still equal
torch_small_expected.npz (which the test compares the legacy file against).

torch is only needed here; the tests read the files with mtcolor.state_dict_files (through
mtcolor.weights), which never imports it.
Outputs in tests/fixtures/:
  torch_small.pth            genuine torch.save zip of tensors of assorted dtypes and layouts
  torch_small_expected.npz   the same tensors as torch sees them (contiguous numpy copies)
  torch_legacy.pth           the same tensors in the pre-1.6 non-zip format
                             (torch.save(_use_new_zipfile_serialization=False)); expected values are
                             torch_small_expected.npz too
  torch_malicious.pth        a torch.save zip whose pickle calls os.system (must be refused)
  resnet18_strided.pth       a real torchvision resnet18 state dict (keys, shapes, int64 counters)
                             whose tensors are strided views of small random storages, so the file
                             stays tiny while every element is still defined
  resnet18_strided_probe.npz torch's values of that state dict at random indices
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MARKER = "mtcolor_pwned_marker"  # the malicious pickle would create this file in the cwd


def small_tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        # A transposed slice starting at a non-zero storage offset: stride != contiguous.
        "f32_view": base[1:5, 2:5].t(),
        # Another view of the same storage: the file holds `base` once, both refer to it.
        "f32_same_storage": base[0],
        "f64": torch.randn(2, 3, dtype=torch.float64, generator=g),
        "f16": torch.randn(5, generator=g).to(torch.float16),
        "bf16": torch.randn(4, generator=g).to(torch.bfloat16),
        "i64": torch.tensor([-(2**40), -1, 0, 7, 2**62], dtype=torch.int64),
        "i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3),
        "i16": torch.tensor([-300, 5], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "expanded": torch.tensor([1.25, -2.0]).reshape(2, 1).expand(2, 3),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }
    return tensors


def expected_numpy(tensors):
    out = {}
    for k, t in tensors.items():
        t = t.detach()
        if t.dtype == torch.bfloat16:
            out[k + "__as_float32"] = t.float().numpy()  # npz has no bfloat16; exact in float32
        else:
            out[k] = t.contiguous().numpy()
    return out


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def strided_resnet18():
    """torchvision's resnet18 state dict, each tensor a strided view of a small storage."""
    g = torch.Generator().manual_seed(1)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    small, probes = {}, {}
    rng = np.random.default_rng(2)
    for i, (k, t) in enumerate(sd.items()):
        if t.dtype == torch.int64:  # num_batches_tracked
            small[k] = torch.tensor(1000 + i, dtype=torch.int64)
            continue
        # Strides (1, 3, 5, 2) for (O, I, H, W): unequal strides, so swapping two axes reads
        # different elements and a transposition mistake shows; the storage stays ~4 O floats.
        shape = tuple(t.shape)
        strides = tuple([1, 3, 5, 2][: len(shape)])
        numel = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        storage = torch.randn(numel, generator=g)
        if k.endswith("running_var"):
            storage = storage.abs() + 0.5
        small[k] = storage.as_strided(shape, strides)
        idx = np.stack([rng.integers(0, n, size=16) for n in shape], axis=-1)
        probes[k + "__index"] = idx
        probes[k + "__value"] = np.array([small[k][tuple(j)].item() for j in idx], np.float32)
    return small, probes


def write_legacy(tensors):
    torch.save(tensors, OUT / "torch_legacy.pth", _use_new_zipfile_serialization=False)
    back = torch.load(OUT / "torch_legacy.pth", weights_only=True)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = small_tensors()
    if "--legacy-only" in sys.argv[1:]:
        expected = np.load(OUT / "torch_small_expected.npz")
        got = expected_numpy(tensors)
        assert sorted(got) == sorted(expected.files)
        assert all(
            np.array_equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype for k in got
        )
        write_legacy(tensors)
        print(f"torch_legacy.pth: {(OUT / 'torch_legacy.pth').stat().st_size} bytes")
        return
    torch.save(tensors, OUT / "torch_small.pth")
    np.savez(OUT / "torch_small_expected.npz", **expected_numpy(tensors))
    write_legacy(tensors)
    torch.save({"conv1.weight": tensors["f32"], "evil": _Evil()}, OUT / "torch_malicious.pth")
    sd, probes = strided_resnet18()
    torch.save(sd, OUT / "resnet18_strided.pth")
    np.savez_compressed(OUT / "resnet18_strided_probe.npz", **probes)
    # Sanity: torch reads back what it wrote.
    back = torch.load(OUT / "resnet18_strided.pth")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    for p in sorted(OUT.glob("*")):
        if p.name.startswith(("torch_", "resnet18_strided")):
            print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
