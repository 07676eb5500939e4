"""Control as denoiser wrappers: each takes a denoiser and returns another, so it works with every
sampler unchanged.

* ``classifier_free_guidance``: ``x0 = x0_u + w (x0_c - x0_u)`` (Ho & Salimans 2022), one batched
  call for both halves, optional guidance interval (Kynkaanniemi et al. 2024) and rescale
  (Lin et al. 2024);
* ``classifier_guidance``: ``score + w grad log p(y | x_t)`` (Dhariwal & Nichol 2021), i.e.
  ``x0 + w sigma^2/alpha grad log p(y | x_t)`` in the denoiser contract;
* ``inpaint``: known entries replaced by the forward-noised original before each call and by the
  original in the output (the "replacement" method of Song et al. 2021b, App. I.2);
* ``repaint``: inpainting with RePaint's resampling (Lugmayr et al. 2022): every ancestral step is
  repeated ``resample`` times, jumping back by one forward-noising step in between, so the
  generated part has time to agree with the known part;
* ``sdedit``: start from a noised input at ``strength`` in ``[0, 1]`` (Meng et al. 2022).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import Process
from diffusion_jax.samplers import DDPM, Carry, Context, make_grid, sample

Array = jax.Array


def check_labels(y, num_classes: int | None, allow_null: bool = False) -> None:
    """The one label check: ``y`` in ``[0, num_classes)``, or ``[0, num_classes]`` with
    ``allow_null`` (label ``num_classes`` = unconditional). Concrete labels fail here with a
    ``ValueError``; traced labels (under ``jit``) fail when the program runs."""
    if num_classes is None:
        return
    top = num_classes + 1 if allow_null else num_classes
    what = (f"[0, {num_classes}] ({num_classes} = unconditional)" if allow_null
            else f"[0, {num_classes})")

    def check(v):
        v = np.asarray(v)
        if v.size and (v.min() < 0 or v.max() >= top):
            raise ValueError(f"labels must be in {what}, got values in [{v.min()}, {v.max()}]")

    if isinstance(y, jax.core.Tracer):
        jax.debug.callback(check, y)
    else:
        check(y)


def classifier_free_guidance(denoise: Callable, y: Array, null_label: int, scale: float,
                             interval: tuple[float, float] | None = None, rescale: float = 0.0,
                             num_classes: int | None = None) -> Callable:
    """``denoise(x, t, y) -> x0_hat`` (``y = null_label`` is unconditional) -> ``(x, t) -> x0``.

    ``scale``: 0 unconditional, 1 conditional, > 1 guided. ``interval=(t_lo, t_hi)``: guide only
    there (conditional elsewhere). ``rescale`` in [0, 1]: blend toward the guided prediction
    rescaled to the conditional one's per-example std."""
    if num_classes is None:
        num_classes = null_label
    check_labels(y, num_classes)
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")

    def guided(x, t):
        b = x.shape[0]
        both = denoise(jnp.concatenate([x, x]), t,
                       jnp.concatenate([jnp.asarray(y), jnp.full((b,), null_label, jnp.int32)]))
        cond, uncond = both[:b], both[b:]
        w = scale
        if interval is not None:
            w = jnp.where((t >= interval[0]) & (t <= interval[1]), scale, 1.0)
        out = uncond + w * (cond - uncond)
        if rescale > 0:
            axes = tuple(range(1, x.ndim))
            ratio = jnp.std(cond, axis=axes, keepdims=True) / (jnp.std(out, axis=axes, keepdims=True) + 1e-8)
            out = rescale * out * ratio + (1 - rescale) * out
        return out

    return guided


def guided_pair(denoise_both: Callable, scale: float) -> Callable:
    """``denoise_both(x2, t) -> x0_hat`` takes ``[x, x]`` and returns the conditional half then
    the unconditional one (the conditioning already doubled, e.g. a prompt's and a negative
    prompt's text contexts) -> ``(x, t) -> x0_u + scale (x0_c - x0_u)``: one network call."""
    def guided(x, t):
        b = x.shape[0]
        both = denoise_both(jnp.concatenate([x, x]), t)
        return both[b:] + scale * (both[:b] - both[b:])

    return guided


def classifier_guidance(denoise: Callable, log_prob: Callable, y: Array, scale: float,
                        process: Process, num_classes: int | None = None) -> Callable:
    """``log_prob(x_t, t) -> [B, K]`` log-probabilities of a noise-conditional classifier."""
    check_labels(y, num_classes)

    def guided(x, t):
        def logp_y(xx):
            lp = log_prob(xx, t)
            return jnp.sum(jnp.take_along_axis(lp, jnp.asarray(y)[:, None], axis=1))

        grad = jax.grad(logp_y)(x)
        a, s = process.alpha(t), process.sigma(t)
        return denoise(x, t) + scale * (s**2 / a) * grad

    return guided


def broadcast_mask(mask, x_known):
    mask = jnp.asarray(mask)
    try:
        jnp.broadcast_shapes(mask.shape, x_known.shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to the image shape "
                         f"{x_known.shape}") from None
    return jnp.broadcast_to(mask, x_known.shape).astype(x_known.dtype)


def inpaint(denoise: Callable, process: Process, x_known: Array, mask: Array, key: Array) -> Callable:
    """``mask`` (1 = known, broadcastable to ``x_known``); the noise for the known part is drawn
    once from ``key``. The returned denoiser's output equals ``x_known`` where ``mask = 1``;
    sample with ``final="denoise"`` so that the result is that output (the default ODE final
    step also averages in the sampler's own state, whose known part is not exact)."""
    m = broadcast_mask(mask, x_known)
    eps = jax.random.normal(key, x_known.shape, x_known.dtype)

    def guided(x, t):
        x0 = denoise(m * process.marginal(x_known, t, eps) + (1 - m) * x, t)
        return m * x_known + (1 - m) * x0

    return guided


def repaint(denoise: Callable, process: Process, x_known: Array, mask: Array, key: Array,
            num_steps: int = 100, resample: int = 10, grid: str = "logsnr") -> Array:
    """Inpaint with RePaint's resampling; returns samples equal to ``x_known`` where ``mask = 1``.

    One ``lax.scan`` over the grid; at each step from ``s`` to the next time ``t < s`` (the
    samplers' convention), ``resample`` times: replace the known entries of ``x_s`` by a fresh
    forward sample ``q(x_s | x_known)``, take the DDPM ancestral step of ``samplers.DDPM`` to
    ``t``, and (all but the last time) noise back to ``s`` with the forward transition
    ``q(x_s | x_t)``. ``resample=1`` is the replacement method with ancestral steps.
    NFE = num_steps * resample + 1.
    """
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    m = broadcast_mask(mask, x_known)
    ts = make_grid(process, num_steps, grid)
    k_prior, k_steps = jax.random.split(key)
    x_T = process.prior_sample(k_prior, x_known.shape).astype(x_known.dtype)
    normal = lambda k: jax.random.normal(k, x_known.shape, x_known.dtype)
    ctx, ddpm = Context(denoise, process, num_steps), DDPM()

    def step(x, inp):
        i, s, t, k = inp
        a_s, s_s, a_t, s_t = process.alpha(s), process.sigma(s), process.alpha(t), process.sigma(t)
        var_up = jnp.maximum(s_s**2 - (a_s / a_t) ** 2 * s_t**2, 0.0)  # q(x_s | x_t) variance

        def down(x, k):
            k1, k2 = jax.random.split(k)
            x = m * process.marginal(x_known, s, normal(k1)) + (1 - m) * x
            return ddpm.step(ctx, Carry(x), i, s, t, k2).x

        def down_up(u, x):
            k_down, k_up = jax.random.split(jax.random.fold_in(k_u, u))
            return (a_s / a_t) * down(x, k_down) + jnp.sqrt(var_up) * normal(k_up)

        k_u, k_last = jax.random.split(k)
        x = jax.lax.fori_loop(0, resample - 1, down_up, x)
        return down(x, k_last), None

    keys = jax.random.split(k_steps, num_steps)
    x, _ = jax.lax.scan(step, x_T, (jnp.arange(num_steps), ts[:-1], ts[1:], keys))
    x0 = denoise(x, ts[-1])
    return m * x_known + (1 - m) * x0


def sdedit(denoise: Callable, process: Process, x_init: Array, strength: float, key: Array,
           sampler="ddpm", num_steps: int = 50, grid: str = "logsnr") -> Array:
    """Noise ``x_init`` to ``t = t_min + strength (t_max - t_min)`` and sample back to data.
    Strength 0 returns ``x_init``; strength 1 starts from (almost) pure noise."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return x_init
    t0 = process.t_min + strength * (process.t_max - process.t_min)
    k_noise, k_sample = jax.random.split(key)
    x_t = process.marginal(x_init, t0, jax.random.normal(k_noise, x_init.shape, x_init.dtype))
    ts = make_grid(process, num_steps, grid, t_max=t0)
    return sample(denoise, process, x_t, sampler=sampler, ts=ts, key=k_sample)
