"""MeanFlow (Geng et al. 2025): one network ``u(z, r, t)`` learns the *average* velocity of the
flow-matching ODE between times ``r <= t``, so one evaluation jumps from noise to data.

On the linear interpolant ``z_t = (1 - t) x + t e`` (the ``flow`` process; ``t = 1`` is noise)
the instantaneous velocity is ``v = e - x``, and the average velocity
``u(z_t, r, t) = 1/(t - r) int_r^t v(z_s, s) ds`` satisfies the MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),   d/dt = v . grad_z + d/dt,

whose right side is the training target: the total derivative is one ``jax.jvp`` of the
network along the tangent ``(v, 0, 1)``, under ``stop_gradient``. Times ``t, r`` are both drawn
logit-normal (the larger is ``t``), and ``r = t`` (plain flow matching) except for a fraction
``ratio`` of the batch. The loss is adaptively weighted, ``|d|^2 / sg(|d|^2 + c)^p``.

Classifier-free guidance is folded into training (the paper's Eq. 19): for a labelled example
the target velocity is ``omega v + (1 - omega) u(z_t, t, t | null)`` (the network's own
unconditional velocity, stop-gradient), so guided samples still cost one evaluation.

Sampling in ``n`` steps: ``z_{t_{k+1}} = z_{t_k} - (t_k - t_{k+1}) u(z_{t_k}, t_{k+1}, t_k)`` on
``t_k = 1 - k/n``; NFE = ``n``. The network is the library's U-Net or MLP, given the two times as
``[B, 2] = (t, t - r)`` columns (each embedded by its own MLP).

    method = MeanFlow(model, tx, shape=(28, 28, 1), conditioning=Conditioning(10, drop_prob=0.1))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.conditioning import Conditioning
from diffusion_jax.methods import diffusion
from diffusion_jax.methods.base import MethodBase, StepsSampling, class_rows_preview
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models.dit import DiT
from diffusion_jax.processes import Flow
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("meanflow",)


@dataclasses.dataclass(frozen=True, eq=False)
class MeanFlow(SingleNetwork, MethodBase):
    """``ratio``: the fraction of draws with ``r != t``; ``p_mean``/``p_std``: the logit-normal
    law of both times; ``norm_p``/``norm_c``: the adaptive loss weight; ``omega``: the CFG scale
    folded into training (1: none); ``sample_steps``: the default evaluations of ``sample``."""
    model: Any
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    conditioning: Conditioning = Conditioning()
    ema_decay: float = 0.9999
    ema_start: int = 0
    ratio: float = 0.25
    p_mean: float = -0.4
    p_std: float = 1.0
    norm_p: float = 1.0
    norm_c: float = 1e-3
    omega: float = 1.0
    sample_steps: int = 1
    name: str = "meanflow"
    sample_options = frozenset({"steps", "labels"})

    @property
    def num_classes(self) -> int:
        return self.conditioning.num_classes

    @property
    def process(self) -> Flow:
        """The interpolant ``(1 - t) x + t e`` on ``t`` in ``[0, 1]`` (``dj.gmm``'s exact flow
        maps use it)."""
        return Flow(t_min=0.0, t_max=1.0)

    def example_inputs(self) -> tuple:
        x, t = jnp.zeros((1,) + self.shape), jnp.zeros((1, 2))
        if not self.num_classes:
            return x, t
        return x, t, jnp.zeros((1,), jnp.int32)

    # -- the network as an average velocity ----------------------------------------------------
    def u(self, params, z, r, t, y=None, train: bool = False, rngs=None):
        """``u(z, r, t)`` for per-example times ``r, t [B]`` (labels ``y [B]`` or ``None``)."""
        tt = jnp.stack([t, t - r], axis=-1)
        kw = {} if y is None else {"y": y}
        return self.model.apply({"params": params}, z, tt, train=train, rngs=rngs, **kw)

    def times(self, key, n: int):
        """``(r, t)`` of a batch: both logit-normal, ``r <= t``, and ``r = t`` but for a fraction
        ``ratio``."""
        k1, k2, k3 = jax.random.split(key, 3)
        a, b = (jax.nn.sigmoid(self.p_mean + self.p_std * jax.random.normal(k, (n,)))
                for k in (k1, k2))
        t, r = jnp.maximum(a, b), jnp.minimum(a, b)
        r = jnp.where(jax.random.uniform(k3, (n,)) < self.ratio, r, t)
        return r, t

    def loss(self, params, x, key, cond: dict | None):
        """The adaptively weighted MeanFlow loss of a batch ``x`` and its metrics."""
        k_t, k_e, k_drop = jax.random.split(key, 3)
        b = x.shape[0]
        r, t = self.times(k_t, b)
        bc = lambda s: s.reshape((b,) + (1,) * (x.ndim - 1))
        e = jax.random.normal(k_e, x.shape, x.dtype)
        z = (1.0 - bc(t)) * x + bc(t) * e
        v = e - x
        y = None if not cond else cond.get("y")
        rngs = {"dropout": k_drop}
        if y is not None and self.omega != 1.0:
            null = jnp.full_like(y, self.num_classes)
            v_null = jax.lax.stop_gradient(self.u(params, z, t, t, null))
            guided = self.omega * v + (1.0 - self.omega) * v_null
            v = jnp.where(bc(y != self.num_classes), guided, v)  # dropped labels keep v
        fn = lambda z_, r_, t_: self.u(params, z_, r_, t_, y, True, rngs)
        u, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
        target = jax.lax.stop_gradient(v - bc(t - r) * dudt)
        err = jnp.mean(jnp.reshape((u - target) ** 2, (b, -1)), axis=1)
        w = jax.lax.stop_gradient(1.0 / (err + self.norm_c) ** self.norm_p)
        return jnp.mean(w * err), {"mse": jnp.mean(err)}

    # -- training ------------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        cond = self.conditioning(batch, jax.random.fold_in(key, 0x7FFFFFFF))
        (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(
            state.params, batch["image"], key, cond)
        params, opt_state, ema = apply_gradients(
            self.tx, state.params, state.opt_state, grads, state.ema_params,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        metrics = {"loss": loss, "mse": aux["mse"], "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, params, key, n: int, steps: int | None = None, cond: dict | None = None,
               times=None):
        """``n`` samples in ``steps`` evaluations (default ``sample_steps``), or along ``times``
        (decreasing from 1 to 0, e.g. ``(1.0, 0.6, 0.0)``); class-conditional models get
        balanced labels unless ``cond={"y": ...}`` says otherwise."""
        ts = check_times(times) if times is not None else tuple(
            float(v) for v in np.linspace(1.0, 0.0, (steps or self.sample_steps) + 1))
        y = None
        if self.num_classes:
            y = (cond or {}).get("y")
            y = jnp.arange(n) % self.num_classes if y is None else jnp.asarray(y)
        e = jax.random.normal(key, (n,) + self.shape)
        return _sampler(self, ts)(params, e, y)

    sample_controls = StepsSampling.sample_controls
    nfe = StepsSampling.nfe

    def eval_requests(self, samplers, nfes, grids, guidance):
        """One row per NFE (``steps = nfe``); guidance is folded into the weights."""
        if guidance is not None:
            raise ValueError("--guidance: a MeanFlow model's guidance is folded into training "
                             f"(meanflow.omega={self.omega}); sample without it")
        return StepsSampling.eval_requests(self, samplers, nfes, grids, None)

    preview = class_rows_preview


def check_times(times) -> tuple[float, ...]:
    """Sampling times: from 1 (noise) down to 0 (data), strictly decreasing (each jump goes from
    ``t`` to an earlier ``r``; ``r > t`` would run the flow backwards)."""
    ts = tuple(float(v) for v in times)
    if len(ts) < 2 or ts[0] != 1.0 or ts[-1] != 0.0:
        raise ValueError(f"MeanFlow sampling times {ts} must run from 1.0 (noise) to 0.0 (data)")
    for t, r in zip(ts, ts[1:]):
        if not r < t:
            raise ValueError(f"MeanFlow sampling times {ts}: r={r} after t={t} is not earlier; "
                             "each jump goes from t down to r < t")
    return ts


@functools.lru_cache(maxsize=16)
def _sampler(method: MeanFlow, ts: tuple[float, ...]):
    def run(params, z, y):
        for t, r in zip(ts, ts[1:]):
            tt, rr = jnp.full(z.shape[:1], t), jnp.full(z.shape[:1], r)
            z = z - (t - r) * method.u(params, z, rr, tt, y)
        return z

    return jax.jit(run)


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MeanFlowSpec:
    ratio: float = 0.25          # fraction of draws with r != t (0: plain flow matching)
    p_mean: float = -0.4         # logit-normal law of the times (the paper's ImageNet setting)
    p_std: float = 1.0
    norm_p: float = 1.0          # adaptive loss weight 1 / (|d|^2 + c)^p (0: plain L2)
    norm_c: float = 1e-3
    omega: float = 1.0           # CFG scale folded into training (class-conditional; 1: none)
    sample_steps: int = 1        # evaluations of `sample` (CLI: sample --steps)


def build(ctx: BuildContext) -> MeanFlow:
    c = ctx.typed(MeanFlowSpec, "meanflow", required=True)
    if not 0.0 <= c.ratio <= 1.0:
        raise ConfigError(f"meanflow.ratio={c.ratio} must be in [0, 1] (the fraction of r != t)")
    if c.p_std <= 0 or c.norm_c <= 0 or c.norm_p < 0:
        raise ConfigError("meanflow.p_std and meanflow.norm_c must be > 0, meanflow.norm_p >= 0")
    model, cond = diffusion.denoiser_network(ctx.section("model"), ctx.data)
    if cond.context_dim or cond.low_res_size:
        raise ConfigError("MeanFlow here is unconditional or class-conditional (no context_dim "
                          "or low_res_size)")
    if c.omega != 1.0 and not cond.num_classes:
        raise ConfigError(f"meanflow.omega={c.omega} folds classifier-free guidance into "
                          "training: it needs a class-conditional model (model.conditional=True)")
    if c.omega < 1.0:
        raise ConfigError(f"meanflow.omega={c.omega} must be >= 1 (1: no guidance)")
    if isinstance(model, DiT):
        raise ConfigError("MeanFlow takes the U-Net or the MLP (their time embeddings accept "
                          "two times); model.name='dit' does not yet")
    return MeanFlow(model, ctx.tx, ctx.data.shape, cond, ctx.train.ema_decay,
                    ctx.train.ema_start, c.ratio, c.p_mean, c.p_std, c.norm_p, c.norm_c,
                    c.omega, c.sample_steps)
