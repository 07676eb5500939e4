"""Diffusion as a method: a denoising loss on one network (with EMA), sampling with any sampler,
classifier-free guidance and the other controls of ``diffusion_jax.guidance``.

    method = Diffusion(model, process, parameterization, loss, tx, shape=(28, 28, 1), ...)
    fn = make_sample_fn(model, process, par, "dpmpp_2m", 20, "logsnr", guidance_scale=2.0)
    images = fn(params, x_T, key, cond={"y": labels})
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import guidance
from diffusion_jax.conditioning import Conditioning, downsample
from diffusion_jax.losses import LossConfig, denoising_loss
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.parameterization import Parameterization, make_denoiser
from diffusion_jax.processes import Process
from diffusion_jax.samplers import sample as run_sampler


@dataclasses.dataclass(frozen=True, eq=False)
class Diffusion(SingleNetwork):
    """``shape``: one example's shape; ``sampler``/``num_steps``/``grid``/``guidance``: the
    defaults of ``sample`` and ``preview`` (the experiment's ``sample`` section)."""
    model: object
    process: Process
    parameterization: Parameterization
    loss: LossConfig
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    conditioning: Conditioning = Conditioning()
    ema_decay: float = 0.999
    ema_start: int = 0
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    grid: str = "default"  # the sampler's own (samplers.DEFAULT_GRIDS)
    guidance: float | None = None
    name: str = "diffusion"
    generates = True

    # -- state -------------------------------------------------------------------------------
    def example_inputs(self) -> tuple:
        """Positional arguments for ``model.init``: ``(x, t[, y, train, context, low_res])``."""
        x, t = jnp.zeros((1,) + self.shape), jnp.zeros((1,))
        c = self.conditioning
        if not c.active:
            return x, t
        y = jnp.zeros((1,), jnp.int32) if c.num_classes else None
        ctx = jnp.zeros((1, 1, c.context_dim)) if c.context_dim else None
        low = (jnp.zeros((1, c.low_res_size, c.low_res_size, self.shape[-1]))
               if c.low_res_size else None)
        return x, t, y, False, ctx, low

    # -- training ----------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        """Pure; the per-step key is ``fold_in(key, step)``, so a resumed run draws exactly the
        noise the uninterrupted run would have drawn."""
        key = jax.random.fold_in(key, state.step)
        # the conditioning's dropout has its own stream: the loss's noise does not depend on it
        cond = self.conditioning(batch, jax.random.fold_in(key, 0x7FFFFFFF))
        apply = lambda p, x, t, c, train, rngs: self.model.apply(
            {"params": p}, x, t, train=train, rngs=rngs, **(c or {}))

        def loss_fn(params):
            return denoising_loss(apply, params, batch["image"], key, self.process,
                                  self.parameterization, self.loss, cond=cond, train=True)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state, ema = apply_gradients(
            self.tx, state.params, state.opt_state, grads, state.ema_params,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    # -- sampling ----------------------------------------------------------------------------
    def sample_fn(self, sampler: str | None = None, num_steps: int | None = None,
                  grid: str | None = None, guidance_scale: float | None = None,
                  classifier: tuple | None = None) -> Callable:
        """The jitted ``fn(params, x_T, key, cond=None, known=None, mask=None)`` (cached)."""
        return make_sample_fn(self.model, self.process, self.parameterization,
                              sampler or self.sampler, num_steps or self.num_steps,
                              grid or self.grid, guidance_scale, classifier)

    def default_labels(self, n: int):
        """Class-balanced labels ``0, 1, ..., K-1, 0, ...`` (None for unconditional models)."""
        k = self.conditioning.num_classes
        return jnp.arange(n) % k if k else None

    def sample(self, params, key, n: int, cond: dict | None = None):
        """``n`` samples with the experiment's sampler; class-conditional models get balanced
        labels at the experiment's guidance scale unless ``cond`` says otherwise."""
        k = self.conditioning.num_classes
        if cond is None and k:
            cond = {"y": self.default_labels(n)}
        fn = self.sample_fn(guidance_scale=self.guidance if k else None)
        return fn(params, self.process.prior_sample(key, (n,) + self.shape), key, cond)

    def preview(self, params, key, n: int, test_images):
        """One row per class for class-conditional models; super-resolution models upsample the
        first test images; context-conditioned models need contexts, so they have no preview."""
        c, cond, nrow = self.conditioning, {}, None
        if c.context_dim:
            raise ValueError("previews of context-conditioned models need contexts; set "
                             "train.sample_every=0 and sample with your own contexts")
        if c.num_classes:
            per = max(n // c.num_classes, 1)
            n, nrow = per * c.num_classes, per
            cond["y"] = jnp.repeat(jnp.arange(c.num_classes), per)
        if c.low_res_size:
            cond["low_res"] = downsample(jnp.asarray(test_images(n)), c.low_res_size)
        return np.asarray(self.sample(params, key, n, cond or None)), nrow

    def evaluate(self, params, test_source) -> dict:
        return {}

    def denoiser(self, params, cond: dict | None = None, guidance_scale: float | None = None,
                 classifier: tuple | None = None) -> Callable:
        return model_denoiser(self.model, self.process, self.parameterization, params, cond,
                              guidance_scale, classifier)


def _num_classes(model) -> int:
    return getattr(getattr(model, "config", None), "num_classes", 0)


def model_denoiser(model, process, par, params, cond: dict | None = None,
                   guidance_scale: float | None = None, classifier: tuple | None = None) -> Callable:
    """The network as ``denoise(x, t) -> x0_hat`` with its conditioning bound.

    ``guidance_scale``: classifier-free guidance over ``cond["y"]`` (null label = num_classes);
    ``classifier=(log_prob, scale)``: classifier guidance with ``log_prob(x_t, t) -> [B, K]`` and
    labels ``cond["y"]`` (for an unconditional model the labels are not passed to the network)."""
    cond = dict(cond or {})
    net = lambda x, t, **c: model.apply({"params": params}, x, t, **c)
    denoise = make_denoiser(net, process, par)
    k = _num_classes(model)
    y = cond.get("y")
    if not k:
        cond.pop("y", None)
    if guidance_scale is None:
        out = lambda x, t: denoise(x, t, **cond)
    else:
        rest = {n: v for n, v in cond.items() if n != "y"}

        def labelled(x, t, labels):  # x is [2B]: tile the other conditioning to match
            tiled = {n: jnp.concatenate([v] * (x.shape[0] // v.shape[0])) for n, v in rest.items()}
            return denoise(x, t, y=labels, **tiled)

        out = guidance.classifier_free_guidance(labelled, y, k, guidance_scale)
    if classifier is not None:
        log_prob, scale = classifier
        out = guidance.classifier_guidance(out, log_prob, y, scale, process)
    return out


def check_sample_inputs(model, cond: dict | None, guidance_scale, classifier, x_shape) -> None:
    """Errors a user can make, raised before anything is compiled."""
    k, cond = _num_classes(model), cond or {}
    y = cond.get("y")
    if guidance_scale is not None and not k:
        raise ValueError("classifier-free guidance needs a class-conditional model, but this one "
                         "has no class conditioning (model.conditional=False); train one with "
                         "--config.model.conditional=True, or use classifier guidance")
    if (guidance_scale is not None or classifier is not None) and y is None:
        raise ValueError("guidance needs labels: pass cond={'y': labels} (CLI: --labels)")
    if y is None:
        return
    y = np.asarray(y)
    if y.shape != (x_shape[0],):
        raise ValueError(f"labels must have shape [{x_shape[0]}] (one per sample), got {y.shape}")
    if not k and classifier is None:
        raise ValueError("labels were given but the model has no class conditioning "
                         "(model.conditional=False): drop them or pass a guidance classifier")
    if k:
        guidance.check_labels(y, k, allow_null=True)
    if classifier is not None:
        guidance.check_labels(y, classifier[2], allow_null=False)


@functools.lru_cache(maxsize=64)
def make_sample_fn(model, process, par, sampler: str, num_steps: int, grid: str | tuple,
                   guidance_scale: float | None = None, classifier: tuple | None = None):
    """``fn(params, x_T, key, cond=None, known=None, mask=None) -> images``, jitted whole (one
    XLA program per shape). ``grid``: a grid name, or the times themselves (a tuple: a learned
    grid). ``known``/``mask`` (1 = known): inpainting by replacement.
    ``classifier = (log_prob, scale, num_classes)`` adds classifier guidance."""
    clf = None if classifier is None else classifier[:2]

    def fn(params, x_T, key, cond, known, mask):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale, clf)
        if known is not None:
            denoise = guidance.inpaint(denoise, process, known, mask, jax.random.fold_in(key, 1))
        # inpainting's output is its last denoised estimate, whose known part is exact
        where = dict(ts=np.asarray(grid)) if isinstance(grid, tuple) else dict(grid=grid)
        return run_sampler(denoise, process, x_T, sampler=sampler, num_steps=num_steps, key=key,
                           final="ode" if known is None else "denoise", **where)

    jitted = jax.jit(fn)

    def checked(params, x_T, key, cond=None, known=None, mask=None):
        check_sample_inputs(model, cond, guidance_scale, classifier, x_T.shape)
        if known is not None:
            mask = guidance.broadcast_mask(mask, known)
        return jitted(params, x_T, key, cond, known, mask)

    return checked
