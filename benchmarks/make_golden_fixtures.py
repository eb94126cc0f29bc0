"""Write tests/fixtures/resnet18_golden.npz: reference outputs of PyTorch modules for the flax
models.

Run once from the repository root, in an environment with torch and torchvision (CPU is enough):
    python benchmarks/make_golden_fixtures.py

What it stores, all float32 and NHWC (the flax layout), so tests/test_models.py can compare
without torch:
  * torchvision.models.resnet18 (the library's own module) with every weight and BN running
    statistic drawn by `seeded_state_dict` below: eval-mode features of a 2x3x64x64 input, the five
    stage maps of a 1x3x32x32 input, and the train-mode features plus the updated running stats;
  * pix2pix's NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3, BatchNorm), transcribed below
    from junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py, eval and train mode;
  * one ConvTranspose2d(8, 4, kernel 4, stride 2, padding 1) on an odd-sized input, which pins
    the PyTorch-padding -> flax-padding mapping of the decoder;
  * a PyTorch transcription of mtcolor's ColorDecoder (eval mode), the whole head end to end.
Weights are NOT stored: the test regenerates them with `seeded_state_dict` (pure numpy, imported
from this file), keyed by the PyTorch parameter name, so only inputs and outputs take space.
References are computed in float64 and stored as float32.
"""

from __future__ import annotations

import pathlib
import zlib

import numpy as np

SEED = 0
FIXTURE = (
    pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resnet18_golden.npz"
)
DECODER_WIDTHS = (256, 128, 64, 64, 32)  # must equal mtcolor.models.ColorDecoder.features


def seeded_state_dict(
    scope: str, shapes: dict[str, tuple[int, ...]], seed: int = SEED
) -> dict[str, np.ndarray]:
    """Deterministic float64 values for every parameter/buffer of model `scope`, keyed by its
    PyTorch state-dict name (num_batches_tracked excluded). Each value is drawn from its own
    generator seeded by (seed, crc32(scope/key)), so order does not matter.

    Scales keep activations O(1) so that the relative error means something:
      conv / linear weights N(0, 2/fan_in) with fan_in the number of inputs that meet in one
      output (for a stride-2 4x4 transposed conv, in_channels * 4);
      the decoder's final conv N(0, 0.1/fan_in), so the tanh is not saturated;
      BN weight U(0.5, 1.5), running_var U(0.5, 1.5) (positive), biases and running_mean
      N(0, 0.1^2).
    """
    values = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(f"{scope}/{key}".encode())])
        name = key.rsplit(".", 1)[-1]
        if name == "weight" and len(shape) >= 2:
            transposed = scope == "convT" or (scope == "decoder" and key.endswith(".0.weight"))
            fan_in = shape[0] * shape[2] * shape[3] // 4 if transposed else int(np.prod(shape[1:]))
            gain = 0.1 if (scope == "decoder" and key == f"{len(DECODER_WIDTHS)}.weight") else 2.0
            values[key] = rng.normal(0.0, np.sqrt(gain / fan_in), size=shape)
        elif name in ("weight", "running_var"):
            values[key] = rng.uniform(0.5, 1.5, size=shape)
        elif name in ("bias", "running_mean"):
            values[key] = rng.normal(0.0, 0.1, size=shape)
        else:
            raise ValueError(f"no rule for {scope}/{key}")
    return values


def seeded_input(name: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    return (
        np.random.default_rng([seed, zlib.crc32(name.encode())])
        .normal(size=shape)
        .astype(np.float32)
    )


def _nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def _fill(module, scope: str, out: dict[str, np.ndarray]) -> None:
    """Load seeded values into `module` and record its key names and shapes in the fixture."""
    import torch

    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    values = seeded_state_dict(scope, {k: tuple(v.shape) for k, v in state.items()})
    with torch.no_grad():
        for key, tensor in state.items():
            tensor.copy_(torch.from_numpy(values[key]))
    out[f"{scope}_keys"] = np.array(list(state))
    out[f"{scope}_shapes"] = np.array(
        [list(v.shape) + [-1] * (4 - v.dim()) for v in state.values()]
    )


def stored_shapes(fixture, scope: str) -> dict[str, tuple[int, ...]]:
    """The {key: shape} that `_fill` recorded, for `seeded_state_dict` on the test side."""
    return {
        str(k): tuple(int(d) for d in shape if d >= 0)
        for k, shape in zip(fixture[f"{scope}_keys"], fixture[f"{scope}_shapes"])
    }


def _nlayer_discriminator(torch):
    """pix2pix NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3, norm_layer=BatchNorm2d)."""
    nn = torch.nn
    ndf, n_layers, kw, padw = 64, 3, 4, 1
    use_bias = False  # norm_layer is BatchNorm2d
    sequence = [nn.Conv2d(3, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
    nf_mult = 1
    for n in range(1, n_layers):
        nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
        sequence += [
            nn.Conv2d(
                ndf * nf_mult_prev,
                ndf * nf_mult,
                kernel_size=kw,
                stride=2,
                padding=padw,
                bias=use_bias,
            ),
            nn.BatchNorm2d(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
        ]
    nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
    sequence += [
        nn.Conv2d(
            ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias
        ),
        nn.BatchNorm2d(ndf * nf_mult),
        nn.LeakyReLU(0.2, True),
    ]
    sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
    return nn.Sequential(*sequence)


def _color_decoder(torch):
    """mtcolor's ColorDecoder written in PyTorch: [ConvT 4/2/1 no bias, BN, (Dropout), ReLU] x5,
    Conv 3x3 pad 1 -> 2, Tanh. Keys: block i is `i.0` (convT) and `i.1` (bn), the final conv `5`."""
    nn = torch.nn
    layers, width_in = [], 512
    for width in DECODER_WIDTHS:
        layers.append(
            nn.Sequential(
                nn.ConvTranspose2d(width_in, width, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.Dropout(0.5),
                nn.ReLU(),
            )
        )
        width_in = width
    layers += [nn.Conv2d(width_in, 2, kernel_size=3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


def main() -> None:
    import torch
    import torchvision

    torch.manual_seed(SEED)
    out: dict[str, np.ndarray] = {}

    def to_torch(x: np.ndarray):
        return torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2).contiguous()

    # --- torchvision ResNet-18 ---------------------------------------------------------------
    resnet = torchvision.models.resnet18(weights=None)
    _fill(resnet, "resnet18", out)
    resnet = resnet.double()

    def body(x):
        x = resnet.relu(resnet.bn1(resnet.conv1(x)))
        stages = [x]
        x = resnet.maxpool(x)
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
            x = layer(x)
            stages.append(x)
        return x, stages

    x = seeded_input("resnet18_x", (2, 64, 64, 3))
    out["resnet18_x"] = x
    resnet.eval()
    with torch.no_grad():
        features, _ = body(to_torch(x))
        # Same as torchvision's forward up to avgpool: check the transcription of `body`.
        full = resnet(to_torch(x))
        np.testing.assert_allclose(
            resnet.fc(torch.flatten(resnet.avgpool(features), 1)).numpy(), full.numpy(), rtol=1e-12
        )
    out["resnet18_eval_features"] = _nhwc(features)

    x_small = seeded_input("resnet18_x_small", (1, 32, 32, 3))
    out["resnet18_x_small"] = x_small
    with torch.no_grad():
        _, stages = body(to_torch(x_small))
    for i, stage in enumerate(stages):
        out[f"resnet18_stage{i}"] = _nhwc(stage)

    resnet.train()
    with torch.no_grad():
        features, _ = body(to_torch(x))
    out["resnet18_train_features"] = _nhwc(features)
    for key, value in resnet.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            out[f"resnet18_after_train/{key}"] = value.numpy().astype(np.float32)

    # --- pix2pix PatchGAN ----------------------------------------------------------------------
    disc = _nlayer_discriminator(torch)
    _fill(disc, "patchgan", out)
    disc = disc.double()
    x = seeded_input("patchgan_x", (1, 64, 64, 3))
    out["patchgan_x"] = x
    disc.eval()
    with torch.no_grad():
        out["patchgan_eval"] = _nhwc(disc(to_torch(x)))
    disc.train()
    with torch.no_grad():
        out["patchgan_train"] = _nhwc(disc(to_torch(x)))

    # --- one transposed conv -------------------------------------------------------------------
    conv_t = torch.nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1, bias=False)
    _fill(conv_t, "convT", out)
    conv_t = conv_t.double()
    x = seeded_input("convT_x", (2, 5, 7, 8))
    out["convT_x"] = x
    with torch.no_grad():
        out["convT_y"] = _nhwc(conv_t(to_torch(x)))
    assert out["convT_y"].shape == (2, 10, 14, 4)

    # --- ColorDecoder ----------------------------------------------------------------------------
    decoder = _color_decoder(torch)
    _fill(decoder, "decoder", out)
    decoder = decoder.double().eval()
    x = np.abs(seeded_input("decoder_x", (2, 1, 2, 512)))  # post-ReLU-like bottleneck
    out["decoder_x"] = x
    with torch.no_grad():
        out["decoder_eval"] = _nhwc(decoder(to_torch(x)))
    assert out["decoder_eval"].shape == (2, 32, 64, 2)

    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    total = sum(v.nbytes for v in out.values())
    print(
        f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1024:.0f} KiB on disk, "
        f"{total / 1024:.0f} KiB raw)"
    )
    for name in (
        "resnet18_eval_features",
        "resnet18_train_features",
        "patchgan_eval",
        "decoder_eval",
    ):
        v = out[name]
        print(
            f"  {name}: shape {v.shape} max|v| {np.abs(v).max():.3g} std {v.std():.3g} "
            f"fraction>0 {(v > 0).mean():.2f}"
        )


if __name__ == "__main__":
    main()
