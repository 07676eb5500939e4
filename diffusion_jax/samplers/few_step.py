"""The sampler of few-step students (progressive distillation, reflow): ``n`` deterministic DDIM
steps on the uniform grid ``t(u)``, ``u = 1, (n-1)/n, ..., 1/n``, with
``t(u) = t_min + u (t_max - t_min)``, the last evaluation's ``x0`` the output (``n`` network
evaluations in all; the library's samplers need two grid times, so their fewest is 2). On the
``flow`` process DDIM is Euler on the velocity, so ``ddim(..., 1)`` is rectified flow's
one-step map ``x_T - t v``.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from diffusion_jax.processes import Process


def u_grid(n: int) -> np.ndarray:
    """``u = 1, (n-1)/n, ..., 1/n``: where an ``n``-step sampler evaluates the network."""
    return np.arange(n, 0, -1) / n


def time_of(process: Process, u):
    """The process time at grid position ``u`` in ``[0, 1]``."""
    return process.t_min + u * (process.t_max - process.t_min)


def ddim(denoise: Callable, process: Process, x, n: int):
    """``n`` deterministic DDIM steps over ``u_grid(n)``, the last one returning ``x0_hat`` (``n``
    evaluations of ``denoise(x, t [B]) -> x0_hat``)."""
    us = u_grid(n)
    for k, u in enumerate(us):
        t = time_of(process, u)
        x0 = denoise(x, jnp.full(x.shape[:1], t))
        if k == n - 1:
            return x0
        s = time_of(process, us[k + 1])
        a, sg, a2, sg2 = process.alpha(t), process.sigma(t), process.alpha(s), process.sigma(s)
        x = a2 * x0 + sg2 * (x - a * x0) / sg
    return x
