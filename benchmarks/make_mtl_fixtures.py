"""Write tests/fixtures/mtl_reference.npz: reference outputs for mtcolor.mtl (tests/test_mtl_*.py).

Run from the repository root in a separate environment with torch (not mtcolor's; the library and
its tests never import torch), e.g. a virtual environment in .venv-torch/ (git-ignored):
    pip install torch libmtl "torchjd[full]" scipy numpy
    python benchmarks/make_mtl_fixtures.py

What it stores (keys listed in `meta_keys`; package versions in `versions`):
  * problems p0..p7: Jacobians J f32[T, P] (T = 2, 3; random, near-conflicting, near-aligned,
    mixed scales) with, for each, torchjd 0.18 aggregations (Mean, PCGrad with the recorded
    permutations, CAGrad(c=0.4), MGDA (Frank-Wolfe, eps 1e-3), IMTLG, NashMTL(max_norm=0)) and
    exact float64 solutions computed here (MGDA by active-set enumeration, CAGrad by SLSQP at
    ftol 1e-15 from several starts, Nash by Newton on K a = 1/a, K = J J^T);
  * LibMTL 1.1.5 gradient methods (PCGrad with its recorded random.shuffle orders, CAGrad
    calpha=0.4 rescale=1 (T = 3 only: LibMTL hardcodes 3 tasks there), MGDA none / l2, IMTL at
    its first step) driven on a tiny model (a shared Linear(5, 6) + tanh, one Linear(6, 1) head
    per task, MSE losses, SGD 0.1) for 3 steps: the per-task gradients of the shared parameters
    and LibMTL's combined gradient;
  * LibMTL weightings on the same model: UW (model and log-variances under one Adam 1e-3), DWA
    (4 epochs of 3 steps, the buffer of epoch-mean losses as LibMTL's trainer fills it), GradNorm
    (one step after a first epoch: L_grad, G_per_loss, loss_scale.grad);
  * FAMO: the official code (Cranial-XIX/FAMO, methods/weight_methods.py `FAMO`) transcribed
    below, driven for 6 steps (gamma 1e-3): losses before/after each update, the logits, and the
    multipliers d objective / d losses.
"""

from __future__ import annotations

import itertools
import pathlib
import random
import sys
import types
from importlib.metadata import version

import numpy as np
import scipy.optimize
import torch
import torch.hub

# LibMTL 1.1.5 imports torchvision.models.utils, which torchvision removed in 0.13; the function
# it wants lives in torch.hub.
_shim = types.ModuleType("torchvision.models.utils")
_shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
sys.modules["torchvision.models.utils"] = _shim
import torch.nn.functional as F
import torchjd.aggregation as tja
from LibMTL.weighting import DWA as LDWA
from LibMTL.weighting import IMTL as LIMTL
from LibMTL.weighting import MGDA as LMGDA
from LibMTL.weighting import UW as LUW
from LibMTL.weighting import CAGrad as LCAGrad
from LibMTL.weighting import GradNorm as LGradNorm
from LibMTL.weighting import PCGrad as LPCGrad

FIXTURE = (
    pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mtl_reference.npz"
)
torch.set_default_dtype(torch.float32)
out: dict[str, np.ndarray] = {}


# ----------------------------------------------------------------------------------- problems
def problems():
    rng = np.random.default_rng(20240601)
    probs = []
    for t in (2, 3):
        p = 10 if t == 2 else 40
        base = rng.normal(size=(t, p))
        probs.append(base)  # random
        conflict = np.stack([base[0]] + [-base[0] + 0.3 * rng.normal(size=p) for _ in range(t - 1)])
        probs.append(conflict)  # near-conflicting
        aligned = np.stack([base[0] + 0.05 * rng.normal(size=p) for _ in range(t)])
        probs.append(aligned)  # near-aligned
        scaled = base * np.array([10.0] + [0.1] * (t - 1))[:, None]
        probs.append(scaled)  # mixed scales
    return [j.astype(np.float32) for j in probs]


def exact_mgda(k):
    t = k.shape[0]
    best, best_val = None, np.inf
    for size in range(1, t + 1):
        for s in itertools.combinations(range(t), size):
            s = list(s)
            m = np.zeros((size + 1, size + 1))
            m[:size, :size] = 2 * k[np.ix_(s, s)]
            m[:size, size] = 1
            m[size, :size] = 1
            rhs = np.zeros(size + 1)
            rhs[size] = 1
            sol = np.linalg.lstsq(m, rhs, rcond=None)[0][:size]
            if np.any(sol < -1e-12) or abs(sol.sum() - 1) > 1e-9:
                continue
            x = np.zeros(t)
            x[s] = sol
            val = x @ k @ x
            if val < best_val - 1e-15:
                best, best_val = x, val
    return best


def exact_cagrad(k, c):
    t = k.shape[0]
    k = k / np.mean(np.diag(k))
    b = np.ones(t) / t
    phi = c * np.sqrt(b @ k @ b)

    def f(x):
        return x @ k @ b + phi * np.sqrt(max(x @ k @ x, 0.0) + 1e-20)

    best = None
    starts = [b] + [np.eye(t)[i] * 0.9 + 0.1 / t for i in range(t)]
    for x0 in starts:
        res = scipy.optimize.minimize(
            f,
            x0,
            method="SLSQP",
            bounds=[(0, 1)] * t,
            constraints=[{"type": "eq", "fun": lambda x: 1 - x.sum()}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    w = best.x
    gw = np.sqrt(w @ k @ w)
    return b + phi / gw * w  # rescale 0 (torchjd); the test divides by 1 + c^2 for rescale 1


def exact_nash(k):
    norm = np.linalg.norm(k)
    k = k / norm
    a = 1 / np.sqrt(np.diag(k))
    for _ in range(200):  # plain damped Newton in float64
        g = k @ a - 1 / a
        h = k + np.diag(1 / a**2)
        step = np.linalg.solve(h, g)
        lam = np.sqrt(g @ step)
        a = a - step / (1 + lam) if lam > 0.25 else a - step
    assert np.linalg.norm(k @ a - 1 / a) < 1e-10
    return a / np.sqrt(norm)  # solves the raw K a = 1/a, the fixed point the official CCP reaches


def record_randperm():
    """Replace torch.randperm while torchjd's PCGrad runs, recording its permutations."""
    calls = []
    original = torch.randperm

    def wrapped(*args, **kwargs):
        perm = original(*args, **kwargs)
        calls.append(perm.numpy().copy())
        return perm

    return calls, original, wrapped


for idx, j in enumerate(problems()):
    key = f"p{idx}"
    out[f"{key}/J"] = j
    jt = torch.from_numpy(j)
    k64 = j.astype(np.float64) @ j.astype(np.float64).T
    out[f"{key}/torchjd/mean"] = tja.Mean()(jt).numpy()
    torch.manual_seed(idx)
    calls, original, wrapped = record_randperm()
    torch.randperm = wrapped
    try:
        out[f"{key}/torchjd/pcgrad"] = tja.PCGrad()(jt).numpy()
    finally:
        torch.randperm = original
    out[f"{key}/torchjd/pcgrad_orders"] = np.stack(calls).astype(np.int32)
    out[f"{key}/torchjd/cagrad"] = tja.CAGrad(c=0.4)(jt).numpy()
    out[f"{key}/torchjd/mgda"] = tja.MGDA()(jt).numpy()
    out[f"{key}/torchjd/imtl_g"] = tja.IMTLG()(jt).numpy()
    out[f"{key}/torchjd/nash_mtl"] = tja.NashMTL(n_tasks=j.shape[0], max_norm=0.0)(jt).numpy()
    out[f"{key}/exact/mgda_weights"] = exact_mgda(k64)
    out[f"{key}/exact/cagrad_weights_c0.4"] = exact_cagrad(k64, 0.4)
    out[f"{key}/exact/nash_weights"] = exact_nash(k64)


# ------------------------------------------------------------------------------- tiny model
class Tiny(torch.nn.Module):
    def __init__(self, t, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shared = torch.nn.Linear(5, 6)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(6, 1) for _ in range(t))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.x = torch.randn(16, 5, generator=g)
        self.y = torch.randn(t, 16, 1, generator=g) * torch.arange(1, t + 1).view(t, 1, 1)

    def losses(self):
        h = torch.tanh(self.shared(self.x))
        return torch.stack([F.mse_loss(head(h), self.y[i]) for i, head in enumerate(self.heads)])


def host(method_cls, model, t):
    class Host(method_cls):
        pass

    obj = Host()
    obj.task_num = t
    obj.device = torch.device("cpu")
    obj.rep_grad = False
    obj.epoch = 0
    object.__setattr__(obj, "get_share_params", lambda: model.shared.parameters())
    object.__setattr__(
        obj, "zero_grad_share_params", lambda: model.shared.zero_grad(set_to_none=False)
    )
    obj.init_param() if hasattr(obj, "init_param") else None
    obj._compute_grad_dim()
    return obj


def jacobian(model):
    losses = model.losses()
    rows = []
    for i in range(len(losses)):
        gs = torch.autograd.grad(losses[i], list(model.shared.parameters()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def shared_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.shared.parameters()])


class ShuffleRecorder:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.orders = []

    def shuffle(self, x):
        self.rng.shuffle(x)
        self.orders.append(list(x))


pcgrad_module = sys.modules["LibMTL.weighting.PCGrad"]

libmtl_methods = {
    "pcgrad": (LPCGrad, {}),
    "cagrad": (LCAGrad, {"calpha": 0.4, "rescale": 1}),
    "mgda_none": (LMGDA, {"mgda_gn": "none"}),
    "mgda_l2": (LMGDA, {"mgda_gn": "l2"}),
    "imtl": (LIMTL, {}),
}
for t in (2, 3):
    for name, (cls, kwargs) in libmtl_methods.items():
        if name == "cagrad" and t != 3:
            continue  # LibMTL 1.1.5's CAGrad objective hardcodes x.reshape(1, 3): 3 tasks only
        model = Tiny(t, seed=t)
        method = host(cls, model, t)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = 1 if name == "imtl" else 3  # IMTL's loss scales are learned after step 1
        for step in range(steps):
            key = f"libmtl/{name}/t{t}/s{step}"
            out[f"{key}/J"] = jacobian(model).detach().numpy()
            opt.zero_grad()
            if name == "pcgrad":
                recorder = ShuffleRecorder(100 * t + step)
                pcgrad_module.random = recorder
            method.backward(model.losses(), **kwargs)
            if name == "pcgrad":
                pcgrad_module.random = random
                out[f"{key}/orders"] = np.asarray(recorder.orders, np.int32)
            out[f"{key}/combined"] = shared_grad(model).detach().numpy()
            opt.step()

# UW: model params and LibMTL's loss_scale under one Adam(1e-3), as LibMTL's trainer does.
for t in (2, 3):
    model = Tiny(t, seed=10 + t)
    uw = host(LUW, model, t)
    opt = torch.optim.Adam(list(model.parameters()) + [uw.loss_scale], lr=1e-3)
    losses_log, weights_log, scale_log = [], [], []
    for _step in range(8):
        opt.zero_grad()
        losses = model.losses()
        weights_log.append(uw.backward(losses))
        losses_log.append(losses.detach().numpy())
        opt.step()
        scale_log.append(uw.loss_scale.detach().numpy().copy())
    out[f"libmtl/uw/t{t}/losses"] = np.stack(losses_log)
    out[f"libmtl/uw/t{t}/weights"] = np.stack(weights_log)  # returned before each update
    out[f"libmtl/uw/t{t}/log_var_after"] = np.stack(scale_log)

# DWA: 4 epochs of 3 steps; LibMTL's trainer writes each epoch's mean loss into the buffer.
for t in (2, 3):
    model = Tiny(t, seed=20 + t)
    dwa = host(LDWA, model, t)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs, steps = 4, 3
    dwa.train_loss_buffer = np.zeros((t, epochs))
    losses_log, weights_log = [], []
    for epoch in range(epochs):
        dwa.epoch = epoch
        epoch_losses = []
        for _ in range(steps):
            opt.zero_grad()
            losses = model.losses()
            weights_log.append(dwa.backward(losses, T=2.0))
            losses_log.append(losses.detach().numpy())
            epoch_losses.append(losses.detach().numpy())
            opt.step()
        dwa.train_loss_buffer[:, epoch] = np.mean(epoch_losses, axis=0)
    out[f"libmtl/dwa/t{t}/losses"] = np.stack(losses_log).astype(np.float32)
    out[f"libmtl/dwa/t{t}/weights"] = np.stack(weights_log).astype(np.float32)

# GradNorm: one step in epoch 1 with an arbitrary loss_scale; record the parts mtcolor shares.
for t in (2, 3):
    model = Tiny(t, seed=30 + t)
    gn = host(LGradNorm, model, t)
    with torch.no_grad():
        gn.loss_scale.copy_(torch.linspace(0.8, 1.3, t))
    gn.epoch = 1
    gn.train_loss_buffer = np.array([[1.7, 0.9, 2.5][:t]]).T.repeat(2, axis=1)
    losses = model.losses()
    j = jacobian(model)
    gn.loss_scale.grad = None
    weights = gn.backward(losses, alpha=1.5)
    key = f"libmtl/gradnorm/t{t}"
    out[f"{key}/loss_scale"] = gn.loss_scale.detach().numpy()
    out[f"{key}/grad_norms"] = j.norm(dim=1).detach().numpy()
    out[f"{key}/loss_ratios"] = (losses.detach().numpy() / gn.train_loss_buffer[:, 0]).astype(
        np.float32
    )
    out[f"{key}/loss_scale_grad"] = gn.loss_scale.grad.detach().numpy()
    out[f"{key}/weights"] = weights
    lw = t * torch.softmax(gn.loss_scale.detach(), -1)
    g = lw * j.norm(dim=1)
    r = torch.from_numpy(out[f"{key}/loss_ratios"])
    r = r / r.mean()
    out[f"{key}/L_grad"] = (g - g.mean() * r**1.5).abs().sum().detach().numpy()


# FAMO: the official class, transcribed (Cranial-XIX/FAMO, methods/weight_methods.py).
class OfficialFAMO:
    def __init__(self, n_tasks, gamma=1e-5, w_lr=0.025):
        self.min_losses = torch.zeros(n_tasks)
        self.w = torch.tensor([0.0] * n_tasks, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def get_weighted_loss(self, losses):
        self.prev_loss = losses
        z = F.softmax(self.w, -1)
        D = losses - self.min_losses + 1e-8
        c = (z / D).sum().detach()
        return (D.log() * z / c).sum()

    def update(self, curr_loss):
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (
            curr_loss - self.min_losses + 1e-8
        ).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


for t in (2, 3):
    model = Tiny(t, seed=40 + t)
    famo = OfficialFAMO(t, gamma=1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    log = {"losses": [], "losses_after": [], "multipliers": [], "logits_after": []}
    for _ in range(6):
        opt.zero_grad()
        losses = model.losses()
        lv = losses.detach().clone().requires_grad_(True)
        (mult,) = torch.autograd.grad(famo.get_weighted_loss(lv), lv)
        famo.get_weighted_loss(losses).backward()
        opt.step()
        with torch.no_grad():
            after = model.losses()
        famo.update(after)
        log["losses"].append(losses.detach().numpy())
        log["losses_after"].append(after.numpy())
        log["multipliers"].append(mult.numpy())
        log["logits_after"].append(famo.w.detach().numpy().copy())
    for name, values in log.items():
        out[f"famo/t{t}/{name}"] = np.stack(values).astype(np.float32)

out["versions"] = np.array(
    [
        f"torch=={version('torch')}",
        f"torchjd=={version('torchjd')}",
        f"LibMTL=={version('LibMTL')}",
        f"cvxpy=={version('cvxpy')}",
        f"scipy=={version('scipy')}",
    ]
)
out = {
    k: (v.astype(np.float32) if v.dtype == np.float64 and "exact" not in k else v)
    for k, v in out.items()
}
np.savez_compressed(FIXTURE, **out)
print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes, {len(out)} arrays)", out["versions"])
