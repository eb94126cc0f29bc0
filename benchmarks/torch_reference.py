"""PyTorch eager versions of mtcolor's three models and of their training iteration.

A speed reference for ``benchmarks/train_step.py --reference torch``: the same networks, losses,
optimizer and iteration as mtcolor, written the way the paper's reference tutorial writes them
(torchvision's ResNet-18 cut before avgpool/fc on a 1-channel conv1, pix2pix's NLayerDiscriminator,
``torch.optim.Adam``, ``loss.backward()``, ``opt.step()``), except that the generator runs ONCE per
iteration as in ``mtcolor.train.steps.train_step``: fake computed once, D updated on
``fake.detach()`` (fake first, then real, loss 0.5 * (fake + real)), then G's loss through the
updated D. What this file mirrors, each from the mtcolor module named:

  * ResNet-18 body (mtcolor.models.resnet): torchvision ``resnet18`` with conv1 1 -> 64 channels,
    avgpool and fc dropped (output 512 x H/32 x W/32).
  * ColorDecoder (mtcolor.models.decoder): five blocks ConvTranspose2d(4, 2, 1, no bias) -> BN ->
    Dropout 0.5 (first three blocks) -> ReLU, widths (256, 128, 64, 64, 32), then Conv2d 3x3 with
    bias to 2 channels and Tanh.
  * ClassHead (mtcolor.models.heads): flatten -> Linear(512 h w, 1000) -> ReLU -> Linear(1000, 5).
    mtcolor flattens NHWC, torch NCHW: the copy permutes fc1's input columns (no runtime cost).
  * PatchDiscriminator (mtcolor.models.patchgan): pix2pix 70x70 PatchGAN, n_layers=3, BatchNorm.
  * Losses (mtcolor.tasks.losses): GAN loss of ``Adversary.gan_mode`` ("vanilla" = BCE with logits,
    mtcolor's default; "l1"; "lsgan"), L1 x ``l1_weight`` (100), cross-entropy; each task's loss
    times its weight (classification x10 in the multi-task model).
  * Optimizers (mtcolor.train.optim): Adam(2e-4, betas (0.5, 0.999), eps 1e-8) for G and D.
  * Phase 1 (``backbone_frozen``): the backbone's parameters have ``requires_grad=False`` (no
    gradient, no Adam state) and its BatchNorm stays in eval mode (running statistics, not
    updated), as mtcolor's default ``update_frozen_bn_stats=False``. Phase 2: everything trains.
  * D in the G step: train mode (batch statistics) with its running-statistics update discarded,
    as in mtcolor (momentum 0 for that forward); its parameters get no gradient (the tutorial's
    ``set_requires_grad(D, False)``).

``load_flax_variables`` copies one set of mtcolor variables (params + batch_stats of the model and
the discriminator) into these modules; ``check_equivalence`` (which needs mtcolor and JAX) asserts
equal forward outputs and equal losses of the first two iterations before anything is timed.
torch is a benchmark-only dependency (the ``bench`` extra); the library never imports this file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import zlib
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

DECODER_WIDTHS = (256, 128, 64, 64, 32)  # mtcolor.models.ColorDecoder.features
BOTTLENECK_CHANNELS = 512
LEAKY_SLOPE = 0.2


# ---- networks ------------------------------------------------------------------------------


def resnet18_body(in_channels: int = 1) -> nn.Sequential:
    """fastai ``create_body(resnet18, n_in=1, cut=-2)``: torchvision's ResNet-18 without avgpool
    and fc, conv1 on ``in_channels``. Children: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7
    layer1..4."""
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(*list(net.children())[:-2])


class ColorDecoder(nn.Module):
    """(N, 512, h, w) -> (N, 2, 32h, 32w) in [-1, 1]."""

    def __init__(
        self,
        in_channels: int = BOTTLENECK_CHANNELS,
        widths=DECODER_WIDTHS,
        dropout_rate: float = 0.5,
        dropout_blocks: int = 3,
    ):
        super().__init__()
        blocks = []
        for index, width in enumerate(widths):
            layers = [
                nn.ConvTranspose2d(in_channels, width, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
            ]
            if index < dropout_blocks and dropout_rate > 0:
                layers.append(nn.Dropout(dropout_rate))
            layers.append(nn.ReLU(True))
            blocks.append(nn.Sequential(*layers))
            in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.to_ab = nn.Conv2d(in_channels, 2, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.to_ab(self.blocks(x)))


def class_head(
    in_features: int, hidden: int = 1000, num_classes: int = 5, pooling: str = "flatten"
) -> nn.Sequential:
    """FC(hidden) -> ReLU -> FC(num_classes) logits on the flattened (or average-pooled) map."""
    if pooling == "flatten":
        first = [nn.Flatten()]
    elif pooling == "avg":
        first = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        in_features = BOTTLENECK_CHANNELS
    else:
        raise ValueError(f"pooling must be 'flatten' or 'avg', got {pooling!r}")
    return nn.Sequential(
        *first, nn.Linear(in_features, hidden), nn.ReLU(True), nn.Linear(hidden, num_classes)
    )


def patch_discriminator(in_channels: int = 3, ndf: int = 64) -> nn.Sequential:
    """pix2pix ``NLayerDiscriminator(input_nc, ndf=64, n_layers=3, norm_layer=BatchNorm2d)``."""

    def lrelu():
        return nn.LeakyReLU(LEAKY_SLOPE, True)

    return nn.Sequential(
        nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
        lrelu(),
        nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(ndf * 2),
        lrelu(),
        nn.Conv2d(ndf * 2, ndf * 4, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(ndf * 4),
        lrelu(),
        nn.Conv2d(ndf * 4, ndf * 8, 4, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(ndf * 8),
        lrelu(),
        nn.Conv2d(ndf * 8, 1, 4, stride=1, padding=1),
    )


class Generator(nn.Module):
    """ResNet-18 body -> {"colorization": ab, "classification": logits} (the heads it has).

    ``backbone_frozen``: phase 1. The backbone's parameters do not require gradients and its
    BatchNorm stays in eval mode whatever ``train()`` is called with."""

    def __init__(self, decoder: nn.Module | None, head: nn.Module | None, backbone_frozen: bool):
        super().__init__()
        self.backbone = resnet18_body(1)
        self.decoder = decoder
        self.head = head
        self.backbone_frozen = backbone_frozen
        self.backbone.requires_grad_(not backbone_frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward(self, L):
        features = self.backbone(L)
        out = {}
        if self.decoder is not None:
            out["colorization"] = self.decoder(features)
        if self.head is not None:
            out["classification"] = self.head(features)
        return out


class GANLoss(nn.Module):
    """The tutorial's GANLoss: the loss of patch logits against an all-real / all-fake label map.
    Modes as ``mtcolor.tasks.losses.gan_per_example``."""

    def __init__(self, gan_mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        self.register_buffer("real_label", torch.tensor(real_label))
        self.register_buffer("fake_label", torch.tensor(fake_label))
        self.gan_mode = gan_mode
        if gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        elif gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        elif gan_mode == "l1":
            self.loss = nn.L1Loss()
        else:
            raise ValueError(f"unknown gan_mode {gan_mode!r}")

    def forward(self, logits, target_is_real: bool):
        logits = logits.float()
        labels = (self.real_label if target_is_real else self.fake_label).expand_as(logits)
        if self.gan_mode == "l1":
            return self.loss(torch.sigmoid(logits), labels)
        return self.loss(logits, labels)


def set_requires_grad(module: nn.Module, requires_grad: bool) -> None:
    for p in module.parameters():
        p.requires_grad = requires_grad


@contextlib.contextmanager
def running_stats_kept(module: nn.Module):
    """Train-mode BatchNorm (batch statistics) whose running-statistics update is discarded:
    momentum 0 keeps running = running (mtcolor's critic in the G step)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


# ---- the experiment: models, losses, optimizers, iteration -----------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one of mtcolor's experiments trains (read from its task list, ``spec_from_tasks``)."""

    image_size: int
    colorization: bool
    classification: bool
    backbone_frozen: bool
    num_classes: int = 5
    pooling: str = "flatten"
    hidden: int = 1000
    dropout_rate: float = 0.5
    l1_weight: float = 100.0
    gan_mode: str = "vanilla"
    gan_weight: float = 1.0
    colorization_weight: float = 1.0
    classification_weight: float = 1.0
    learning_rate: float = 2e-4
    betas: tuple = (0.5, 0.999)


def spec_from_tasks(tasks, image_size: int, backbone_frozen: bool, optimizer=None) -> Spec:
    """The Spec of an mtcolor task tuple (``mtcolor.tasks.experiment_tasks``) and OptimizerSpec."""
    kwargs: dict[str, Any] = {
        "image_size": int(image_size),
        "backbone_frozen": bool(backbone_frozen),
        "colorization": False,
        "classification": False,
    }
    for task in tasks:
        if task.name == "colorization":
            if getattr(task, "decoder", "plain") != "plain":
                raise NotImplementedError("the torch reference has the paper's plain decoder only")
            adversary = task.adversary
            kwargs.update(
                colorization=True,
                dropout_rate=float(task.dropout_rate),
                l1_weight=float(task.l1_weight),
                colorization_weight=float(task.weight),
            )
            if adversary is None:
                raise NotImplementedError("the torch reference expects the PatchGAN adversary")
            kwargs.update(gan_mode=adversary.gan_mode, gan_weight=float(adversary.weight))
        elif task.name == "classification":
            kwargs.update(
                classification=True,
                num_classes=int(task.num_classes),
                pooling=task.pooling,
                hidden=int(task.hidden),
                classification_weight=float(task.weight),
            )
        else:
            raise NotImplementedError(f"no torch reference for task {task.name!r}")
    if optimizer is not None:
        if getattr(optimizer, "update_frozen_bn_stats", False):
            raise NotImplementedError("the torch reference mirrors update_frozen_bn_stats=False")
        kwargs.update(
            learning_rate=float(optimizer.learning_rate),
            betas=(float(optimizer.b1), float(optimizer.b2)),
        )
    return Spec(**kwargs)


class TorchExperiment:
    """G (and D), their Adam optimizers and losses; ``train_iteration`` is one training step."""

    def __init__(
        self,
        spec: Spec,
        device: str | torch.device = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        if spec.image_size % 32:
            raise ValueError(f"image size {spec.image_size} is not divisible by 32")
        bottleneck = spec.image_size // 32
        decoder = ColorDecoder(dropout_rate=spec.dropout_rate) if spec.colorization else None
        head = None
        if spec.classification:
            head = class_head(
                BOTTLENECK_CHANNELS * bottleneck * bottleneck,
                spec.hidden,
                spec.num_classes,
                spec.pooling,
            )
        self.G = Generator(decoder, head, spec.backbone_frozen).to(self.device)
        self.D = patch_discriminator(3).to(self.device) if spec.colorization else None

        def adam(params):
            return torch.optim.Adam(params, lr=spec.learning_rate, betas=spec.betas)

        # Only what trains: in phase 1 the backbone has no Adam state, as in mtcolor.
        self.opt_G = adam([p for p in self.G.parameters() if p.requires_grad])
        self.opt_D = adam(self.D.parameters()) if self.D is not None else None
        self.gan_loss = GANLoss(spec.gan_mode).to(self.device)
        self.l1_loss = nn.L1Loss()
        self.ce_loss = nn.CrossEntropyLoss()
        self.G.train()
        if self.D is not None:
            self.D.train()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def batch(self, batch: dict) -> dict:
        """mtcolor's NHWC numpy batch -> NCHW tensors on the device."""
        out = {
            "L": torch.from_numpy(
                np.ascontiguousarray(np.asarray(batch["L"]).transpose(0, 3, 1, 2))
            ),
            "ab": torch.from_numpy(
                np.ascontiguousarray(np.asarray(batch["ab"]).transpose(0, 3, 1, 2))
            ),
            "label": torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)),
        }
        return {k: v.to(self.device) for k, v in out.items()}

    def train_iteration(self, batch: dict) -> dict:
        """One iteration, one generator forward. Returns the loss terms (tensors, no sync)."""
        spec, L, ab = self.spec, batch["L"], batch["ab"]
        metrics = {}
        with self.autocast():
            out = self.G(L)
        if self.D is not None:
            fake_ab = out["colorization"].float()
            fake = torch.cat([L, fake_ab], 1)
            real = torch.cat([L, ab], 1)
            # D step: D(L, fake) vs 0 and D(L, ab) vs 1, two forward passes, fake first.
            set_requires_grad(self.D, True)
            self.opt_D.zero_grad()
            with self.autocast():
                fake_logits = self.D(fake.detach())
                real_logits = self.D(real)
            loss_d_fake = self.gan_loss(fake_logits, False)
            loss_d_real = self.gan_loss(real_logits, True)
            loss_d = 0.5 * (loss_d_fake + loss_d_real)
            loss_d.backward()
            self.opt_D.step()
            metrics.update(
                loss_d=loss_d.detach(),
                loss_d_real=loss_d_real.detach(),
                loss_d_fake=loss_d_fake.detach(),
            )
        # G step: its losses on the same outputs, through the updated D (train mode).
        self.opt_G.zero_grad()
        loss_g = 0.0
        if self.D is not None:
            set_requires_grad(self.D, False)
            with self.autocast(), running_stats_kept(self.D):
                fake_logits = self.D(fake)
            loss_gan = self.gan_loss(fake_logits, True)
            l1 = self.l1_loss(fake_ab, ab)
            loss_col = spec.l1_weight * l1 + spec.gan_weight * loss_gan
            loss_g = loss_g + spec.colorization_weight * loss_col
            metrics.update(loss_gan=loss_gan.detach(), l1=l1.detach())
        if self.G.head is not None:
            loss_cls = self.ce_loss(out["classification"].float(), batch["label"])
            loss_g = loss_g + spec.classification_weight * loss_cls
            metrics.update(loss_cls=loss_cls.detach())
        loss_g.backward()
        self.opt_G.step()
        metrics["loss_g" if self.D is not None else "loss"] = loss_g.detach()
        return metrics

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, batch: dict, num_steps: int) -> float:
        """Seconds for ``num_steps`` iterations (device synchronised at the end)."""
        self.sync()
        start = time.perf_counter()
        for _ in range(num_steps):
            metrics = self.train_iteration(batch)
        self.sync()
        seconds = time.perf_counter() - start
        loss = float(metrics.get("loss_g", metrics.get("loss")))
        if not np.isfinite(loss):
            raise FloatingPointError(f"torch reference: non-finite loss {loss}")
        return seconds

    def iteration_flops(self, batch: dict) -> float:
        """FLOPs of one iteration as torch's FlopCounterMode counts them (convs and matmuls,
        forward and backward; elementwise ops are not counted, unlike XLA's figure). Runs one
        iteration (it changes the weights like any other)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.train_iteration(batch)
        self.sync()
        return float(counter.get_total_flops())


# ---- mtcolor (flax) variables -> torch -------------------------------------------------------


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _conv(kernel) -> np.ndarray:
    """flax Conv kernel HWIO -> torch Conv2d weight OIHW."""
    return _np(kernel).transpose(3, 2, 0, 1)


def _conv_transpose(kernel) -> np.ndarray:
    """mtcolor ConvTranspose4x4Stride2 / flax ConvTranspose(transpose_kernel=True) kernel
    (kh, kw, out, in) -> torch ConvTranspose2d weight (in, out, kh, kw); no spatial flip (flax's
    transpose_kernel does the flip; see mtcolor.models.decoder)."""
    return _np(kernel).transpose(3, 2, 0, 1)


def _bn(prefix: str, params: dict, stats: dict) -> dict:
    return {
        f"{prefix}.weight": _np(params["scale"]),
        f"{prefix}.bias": _np(params["bias"]),
        f"{prefix}.running_mean": _np(stats["mean"]),
        f"{prefix}.running_var": _np(stats["var"]),
    }


def backbone_state(params: dict, stats: dict) -> dict:
    """mtcolor ResNet18 variables -> state-dict entries of ``resnet18_body`` (no prefix)."""
    out = {"0.weight": _conv(params["conv1"]["kernel"])}
    out.update(_bn("1", params["bn1"], stats["bn1"]))
    for stage in range(1, 5):
        for block in range(2):
            name, prefix = f"layer{stage}_{block}", f"{3 + stage}.{block}"
            p, s = params[name], stats[name]
            out[f"{prefix}.conv1.weight"] = _conv(p["conv1"]["kernel"])
            out.update(_bn(f"{prefix}.bn1", p["bn1"], s["bn1"]))
            out[f"{prefix}.conv2.weight"] = _conv(p["conv2"]["kernel"])
            out.update(_bn(f"{prefix}.bn2", p["bn2"], s["bn2"]))
            if "downsample_conv" in p:
                out[f"{prefix}.downsample.0.weight"] = _conv(p["downsample_conv"]["kernel"])
                out.update(_bn(f"{prefix}.downsample.1", p["downsample_bn"], s["downsample_bn"]))
    return out


def decoder_state(params: dict, stats: dict) -> dict:
    out = {}
    for index in range(len(DECODER_WIDTHS)):
        out[f"blocks.{index}.0.weight"] = _conv_transpose(params[f"up{index}_convT"]["kernel"])
        out.update(_bn(f"blocks.{index}.1", params[f"up{index}_bn"], stats[f"up{index}_bn"]))
    out["to_ab.weight"] = _conv(params["to_ab"]["kernel"])
    out["to_ab.bias"] = _np(params["to_ab"]["bias"])
    return out


def head_state(params: dict, pooling: str, bottleneck: int) -> dict:
    """ClassHead -> ``class_head``. flax flattens the (h, w, c) map in NHWC order, torch's Flatten
    the (c, h, w) map: fc1's input rows are permuted from (h, w, c) to (c, h, w) order."""
    fc1 = _np(params["fc1"]["kernel"])  # (in, hidden)
    if pooling == "flatten":
        h = w = bottleneck
        c = fc1.shape[0] // (h * w)
        fc1 = fc1.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    offset = 1 if pooling == "flatten" else 2  # index of the first Linear in class_head
    return {
        f"{offset}.weight": fc1.T,
        f"{offset}.bias": _np(params["fc1"]["bias"]),
        f"{offset + 2}.weight": _np(params["fc2"]["kernel"]).T,
        f"{offset + 2}.bias": _np(params["fc2"]["bias"]),
    }


def discriminator_state(params: dict, stats: dict) -> dict:
    out = {"0.weight": _conv(params["conv1"]["kernel"]), "0.bias": _np(params["conv1"]["bias"])}
    for layer, (conv, bn) in zip((2, 3, 4), ((2, 3), (5, 6), (8, 9))):
        out[f"{conv}.weight"] = _conv(params[f"conv{layer}"]["kernel"])
        out.update(_bn(str(bn), params[f"bn{layer}"], stats[f"bn{layer}"]))
    out["11.weight"] = _conv(params["conv5"]["kernel"])
    out["11.bias"] = _np(params["conv5"]["bias"])
    return out


def _load(module: nn.Module, values: dict, where: str) -> None:
    """Copy ``values`` into ``module``'s state dict: every entry (num_batches_tracked aside) once,
    shapes equal, or fail naming what differs."""
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(state) - set(values)), sorted(set(values) - set(state))
    shapes = sorted(k for k in set(state) & set(values) if tuple(state[k].shape) != values[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"mtcolor variables do not fit the torch {where}: missing {missing}, unexpected "
            f"{unexpected}, shapes {[(k, tuple(state[k].shape), values[k].shape) for k in shapes]}"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(values[key])))


def load_flax_variables(experiment: TorchExperiment, params: dict, batch_stats: dict) -> None:
    """Copy mtcolor's TrainState ``params`` / ``batch_stats`` ({"model": ..., "discriminator":
    ...}, host or device arrays) into the experiment's G and D."""
    spec = experiment.spec
    model_p, model_s = params["model"], batch_stats["model"]
    values = {
        f"backbone.{k}": v
        for k, v in backbone_state(model_p["backbone"], model_s["backbone"]).items()
    }
    if spec.colorization:
        values.update(
            {
                f"decoder.{k}": v
                for k, v in decoder_state(model_p["decoder"], model_s["decoder"]).items()
            }
        )
    if spec.classification:
        values.update(
            {
                f"head.{k}": v
                for k, v in head_state(model_p["head"], spec.pooling, spec.image_size // 32).items()
            }
        )
    _load(experiment.G, values, "generator")
    if experiment.D is not None:
        _load(
            experiment.D,
            discriminator_state(params["discriminator"], batch_stats["discriminator"]),
            "discriminator",
        )


# ---- equivalence with mtcolor ------------------------------------------------------------------


def _path_rng(seed: int, path: tuple) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])


def _map_with_path(fn, tree, path: tuple = ()):
    if isinstance(tree, dict):
        return {k: _map_with_path(fn, v, path + (k,)) for k, v in tree.items()}
    return fn(path, tree)


def seeded_params(params: dict, seed: int = 0) -> dict:
    """Deterministic values of a useful scale for every leaf of a flax params tree (keyed by
    path), so that a wrong layout shows in the outputs: kernels N(0, 2/fan_in) (1/fan_in for the
    logit layers, 0.1/fan_in before the tanh), BN scale U(0.5, 1.5), biases N(0, 0.1^2)."""

    def fill(path: tuple, value):
        shape = tuple(np.shape(value))
        rng = _path_rng(seed, path)
        name, owner = path[-1], path[-2] if len(path) > 1 else ""
        if name == "kernel":
            if owner.endswith("convT"):
                fan_in = shape[3] * 4  # a stride-2 4x4 transposed conv: in x 4 taps per output
            else:
                fan_in = int(np.prod(shape[:-1]))
            gain = {"to_ab": 0.1, "conv5": 1.0, "fc2": 1.0}.get(owner, 2.0)
            return rng.normal(0.0, np.sqrt(gain / fan_in), shape).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0.0, 0.1, shape).astype(np.float32)

    return _map_with_path(fill, params)


def calibrated_batch_stats(state, batch: dict, seed: int = 0) -> dict:
    """Running statistics for ``state`` (host arrays): each BatchNorm's statistics of ``batch``
    in a train-mode forward (the model's on L, D's on concat(L, ab)), perturbed per channel (mean
    + 0.1 std N(0, 1), var x U(0.7, 1.4)), so that eval-mode activations stay of order one (the
    fresh mean 0 / var 1 lets them grow to hundreds through the residual stages and saturates the
    tanh) and a swapped or misplaced statistic still shows."""
    import jax
    import jax.numpy as jnp

    from mtcolor.models.resnet import BN_MOMENTUM

    def updated_stats(state, L, real):
        variables = {"params": state.params["model"], "batch_stats": state.batch_stats["model"]}
        _, mutated = state.model.apply(
            variables,
            L,
            train=True,
            backbone_train=True,
            rngs={"dropout": jax.random.key(0)},
            mutable=["batch_stats"],
        )
        out = {"model": mutated["batch_stats"]}
        if state.discriminator is not None:
            variables = {
                "params": state.params["discriminator"],
                "batch_stats": state.batch_stats["discriminator"],
            }
            _, mutated = state.discriminator.apply(
                variables, real, train=True, mutable=["batch_stats"]
            )
            out["discriminator"] = mutated["batch_stats"]
        return out

    L, ab = jnp.asarray(batch["L"]), jnp.asarray(batch["ab"])
    new = _plain(jax.device_get(jax.jit(updated_stats)(state, L, jnp.concatenate([L, ab], -1))))
    old = _plain(jax.device_get(state.batch_stats))
    # flax: running = momentum * running + (1 - momentum) * batch, so the batch's statistics are
    batch_stats = jax.tree.map(lambda n, o: (n - BN_MOMENTUM * o) / (1 - BN_MOMENTUM), new, old)

    def perturb(path: tuple, value):
        rng = _path_rng(seed, path)
        if path[-1] == "mean":
            var = _get(batch_stats, path[:-1] + ("var",))
            return (
                value + 0.1 * np.sqrt(np.maximum(var, 0)) * rng.normal(size=value.shape)
            ).astype(np.float32)
        return (np.maximum(value, 1e-3) * rng.uniform(0.7, 1.4, value.shape)).astype(np.float32)

    return _map_with_path(perturb, batch_stats)


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _plain(tree):
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return np.asarray(tree)


def _rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _nchw(x) -> np.ndarray:
    x = np.asarray(x)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


@contextlib.contextmanager
def _full_float32():
    """No TF32 anywhere (torch on CUDA allows it for convolutions by default, JAX on GPU may use
    it for its default precision): the check compares float32 arithmetic on both sides."""
    import jax

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("float32"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_equivalence(
    config,
    phase: int,
    batch: dict,
    device: str | torch.device = "cpu",
    forward_tol: float = 1e-4,
    loss_tol: float = 1e-4,
    second_loss_tol: float = 1e-3,
) -> dict:
    """Assert that mtcolor and this reference compute the same thing, float32, dropout 0.

    Builds ``config``'s experiment in mtcolor with the colorization dropout set to 0 (the only
    randomness; the parameter tree is unchanged), gives it seeded weights (``seeded_params``) and
    running statistics near the batch's (``calibrated_batch_stats``), copies them into torch, then
    compares (relative max-abs differences, max |a - b| / max |b|):
      * eval-mode outputs of G (every head) and D (on concat(L, ab));
      * train-mode outputs of G (phase 1: backbone BN on running statistics) and D;
      * the loss terms of two training iterations (``steps.train_step`` vs ``train_iteration``):
        the first iteration's D terms are D's forward, its G terms go through the updated D (so
        they check the D step and Adam); the second's check G's update too. The second uses the
        looser ``second_loss_tol``: a first Adam step moves every parameter by about lr *
        sign(grad), so parameters whose gradient is near zero can move apart by up to 2 lr.
    Phase 1 also checks that torch left the backbone (weights and BN statistics) unchanged.
    Raises AssertionError listing every difference over its tolerance; returns the measured
    differences."""
    import jax
    import jax.numpy as jnp

    from mtcolor import tasks as tasks_lib
    from mtcolor.train import state as state_lib
    from mtcolor.train import steps

    if config.model.get("dtype", "float32") != "float32":
        raise ValueError("check_equivalence compares float32 computations")
    tasks = tuple(
        dataclasses.replace(t, dropout_rate=0.0) if hasattr(t, "dropout_rate") else t
        for t in tasks_lib.tasks_from_config(config)
    )
    state = state_lib.create_train_state(
        config, jax.random.key(0), backbone_frozen=phase == 1, tasks=tasks
    )
    params = seeded_params(_plain(jax.device_get(state.params)))
    state = state.replace(params=jax.tree.map(jnp.asarray, params))
    stats = calibrated_batch_stats(state, batch)
    state = state.replace(batch_stats=jax.tree.map(jnp.asarray, stats))
    spec = spec_from_tasks(state.objective.tasks, config.image_size, phase == 1, state.optimizer)
    torch_exp = TorchExperiment(spec, device)
    load_flax_variables(torch_exp, params, stats)
    tb = torch_exp.batch(batch)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    diffs: dict[str, float] = {}

    with _full_float32():

        def forwards(state, batch):
            real = jnp.concatenate([batch["L"], batch["ab"]], axis=-1)
            out = {f"eval/{k}": v for k, v in steps.predict(state, batch["L"]).items()}
            train_out, _ = steps._apply_model(
                state,
                state.params["model"],
                state.batch_stats["model"],
                batch["L"],
                train=True,
                rng=jax.random.key(1),
            )
            out.update({f"train/{k}": v for k, v in train_out.items()})
            if state.discriminator is not None:
                for mode in ("eval", "train"):
                    out[f"{mode}/discriminator"] = steps._apply_discriminator(
                        state,
                        state.params["discriminator"],
                        state.batch_stats["discriminator"],
                        real,
                        train=mode == "train",
                    )[0]
            return out

        expected = jax.device_get(jax.jit(forwards)(state, jb))
        # Train-mode torch forwards update running statistics: restore them afterwards.
        saved = copy.deepcopy(
            (torch_exp.G.state_dict(), torch_exp.D.state_dict() if torch_exp.D else None)
        )
        got = {}
        with torch.no_grad():
            real = torch.cat([tb["L"], tb["ab"]], 1)
            for mode in ("eval", "train"):
                torch_exp.G.train(mode == "train")
                got.update({f"{mode}/{k}": v for k, v in torch_exp.G(tb["L"]).items()})
                if torch_exp.D is not None:
                    torch_exp.D.train(mode == "train")
                    got[f"{mode}/discriminator"] = torch_exp.D(real)
        torch_exp.G.load_state_dict(saved[0])
        torch_exp.G.train()
        if torch_exp.D is not None:
            torch_exp.D.load_state_dict(saved[1])
            torch_exp.D.train()
        for key in sorted(expected):
            diffs[f"forward {key}"] = _rel(got[key].cpu().numpy(), _nchw(expected[key]))

        backbone_before = copy.deepcopy(torch_exp.G.backbone.state_dict())
        train_step = jax.jit(steps.train_step)
        for iteration in (1, 2):
            state, metrics = train_step(state, jb)
            metrics = jax.device_get(metrics)
            torch_metrics = {k: float(v) for k, v in torch_exp.train_iteration(tb).items()}
            for key, value in sorted(torch_metrics.items()):
                diffs[f"iteration {iteration} {key}"] = _rel(value, metrics[key])

    failures = []
    for key, value in diffs.items():
        tol = (
            forward_tol
            if key.startswith("forward")
            else (loss_tol if key.startswith("iteration 1") else second_loss_tol)
        )
        if not value < tol:  # NaN fails too
            failures.append(f"{key}: relative difference {value:.3g} >= {tol:g}")
    if phase == 1:
        for key, value in torch_exp.G.backbone.state_dict().items():
            if not torch.equal(value, backbone_before[key]):
                failures.append(f"phase 1: torch changed the frozen backbone's {key}")
    if failures:
        raise AssertionError(
            f"torch reference differs from mtcolor ({config.experiment}, {config.image_size} px, "
            f"phase {phase}):\n  " + "\n  ".join(failures)
        )
    return diffs


class TutorialDataset(torch.utils.data.Dataset):
    """The reference tutorial's training set as it writes it: per image, open the file with PIL,
    resize it bicubically to ``size`` x ``size``, flip it at random, convert it with skimage's
    ``rgb2lab`` and scale (L/50 - 1, ab/110). At module level so that ``DataLoader``
    workers started with spawn can unpickle it (benchmarks/tutorial_epoch.py)."""

    def __init__(self, files, labels, size):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image
        from skimage.color import rgb2lab

        image = Image.open(self.files[index]).convert("RGB")
        image = image.resize((self.size, self.size), Image.BICUBIC)
        if np.random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        lab = rgb2lab(np.asarray(image)).astype("float32")
        lab = torch.from_numpy(lab.transpose(2, 0, 1))
        return {
            "L": lab[[0]] / 50.0 - 1.0,
            "ab": lab[[1, 2]] / 110.0,
            "label": self.labels[index],
        }
