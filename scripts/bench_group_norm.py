"""A lever of the training-speed issue, measured and rejected: GroupNorm written as one-pass
statistics (mean and mean of squares) with a hand-written backward pass (two reductions per group
for the input gradient), against flax's ``nn.GroupNorm`` differentiated by JAX, at the matched
U-Net's shapes (batch 64). Prints both forward+backward times (medians of 5 alternated rounds) and
the largest differences between them.

    python scripts/bench_group_norm.py
"""

import time

import diffusion_jax  # noqa: F401 - before jax: the package's CPU settings
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

GROUPS = 8


def _stats(x):
    b, h, w, c = x.shape
    xg = x.reshape(b, h * w, GROUPS, c // GROUPS)
    m = jnp.mean(xg, axis=(1, 3), keepdims=True)
    m2 = jnp.mean(jnp.square(xg), axis=(1, 3), keepdims=True)
    return xg, m, jax.lax.rsqrt(jnp.maximum(m2 - m * m, 0) + 1e-5)


@jax.custom_vjp
def fused_group_norm(x, scale, bias):
    return _fwd(x, scale, bias)[0]


def _fwd(x, scale, bias):
    xg, m, inv = _stats(x)
    return ((xg - m) * inv).reshape(x.shape) * scale + bias, (x, m, inv, scale)


def _bwd(res, dy):
    x, m, inv, scale = res
    b, h, w, c = x.shape
    xhat = (x.reshape(b, h * w, GROUPS, c // GROUPS) - m) * inv
    g = (dy * scale).reshape(xhat.shape)
    mg = jnp.mean(g, axis=(1, 3), keepdims=True)
    mgx = jnp.mean(g * xhat, axis=(1, 3), keepdims=True)
    dx = (inv * (g - mg - xhat * mgx)).reshape(x.shape)
    return dx, jnp.sum(dy * xhat.reshape(x.shape), axis=(0, 1, 2)), jnp.sum(dy, axis=(0, 1, 2))


fused_group_norm.defvjp(_fwd, _bwd)


def main():
    layer = nn.GroupNorm(num_groups=GROUPS)
    rng = np.random.default_rng(0)
    for shape in [(64, 32, 32, 32), (64, 16, 16, 64), (64, 8, 8, 128)]:
        x = jnp.asarray(rng.normal(size=shape).astype(np.float32)) * 2 + 1
        p = layer.init(jax.random.key(0), x)["params"]
        p = {"scale": p["scale"] + 0.3, "bias": p["bias"] + 0.1}
        dy = jnp.asarray(rng.normal(size=shape).astype(np.float32))
        flax_fn = jax.jit(lambda x, p, dy: jax.vjp(
            lambda x, p: layer.apply({"params": p}, x), x, p)[1](dy))
        fused_fn = jax.jit(lambda x, p, dy: jax.vjp(
            fused_group_norm, x, p["scale"], p["bias"])[1](dy))
        a, b = flax_fn(x, p, dy), fused_fn(x, p, dy)
        grad_err = max(float(jnp.max(jnp.abs(a[0] - b[0]))),
                       float(jnp.max(jnp.abs(a[1]["scale"] - b[1]))))
        fwd_err = float(jnp.max(jnp.abs(layer.apply({"params": p}, x)
                                        - fused_group_norm(x, p["scale"], p["bias"]))))
        times = {"flax": [], "fused": []}
        for _ in range(5):
            for name, f in (("flax", flax_fn), ("fused", fused_fn)):
                jax.block_until_ready(f(x, p, dy))
                t = time.perf_counter()
                for _ in range(10):
                    jax.block_until_ready(f(x, p, dy))
                times[name].append((time.perf_counter() - t) / 10)
        print(f"{shape}: flax {1e3 * np.median(times['flax']):.2f} ms, fused "
              f"{1e3 * np.median(times['fused']):.2f} ms (forward max diff {fwd_err:.1e}, "
              f"gradient max diff {grad_err:.1e})")


if __name__ == "__main__":
    main()
