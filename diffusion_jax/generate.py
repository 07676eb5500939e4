"""A trained network -> samples, with its conditioning and every control the library has:
labels with classifier-free guidance, a noise-conditional classifier's guidance, a context, a
low-resolution image, inpainting (replacement, or RePaint resampling), SDEdit.

    config, model, process, par, params, step = load_workdir("runs/fm")
    fn = make_sample_fn(model, process, par, "dpmpp_2m", 20, "logsnr", guidance_scale=2.0)
    images = fn(params, x_T, key, cond={"y": labels})
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from diffusion_jax import guidance as G
from diffusion_jax import parameterization as Z
from diffusion_jax.experiment import build, example_inputs
from diffusion_jax.parallel import make_mesh
from diffusion_jax.samplers import sample as dj_sample
from diffusion_jax.train.checkpoint import Checkpointer
from diffusion_jax.train.state import state_shardings


def workdir_config(workdir: str) -> ConfigDict:
    """The config stored with a workdir's newest checkpoint (cheap: nothing is restored)."""
    ckpt = Checkpointer(workdir)
    if ckpt.latest_step() is None:
        raise SystemExit(f"no checkpoint in {ckpt.dir}: train first with "
                         f"`python -m diffusion_jax train --config ... --workdir {workdir}`")
    return ConfigDict(ckpt.read_config())


def load_workdir(workdir: str):
    """``(config, model, process, parameterization, state, step)`` of a workdir's newest
    checkpoint, restored straight onto the mesh its config declares (no initialisation)."""
    config = workdir_config(workdir)
    ckpt = Checkpointer(workdir)
    model, process, par, _, tx = build(config)
    abstract, _ = state_shardings(model, tx, example_inputs(config), make_mesh(dict(config.mesh)))
    step, state, _ = ckpt.restore(abstract)
    return config, model, process, par, state, step


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
    denoise = Z.make_denoiser(net, process, par)
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

        out = G.classifier_free_guidance(labelled, y, k, guidance_scale)
    if classifier is not None:
        log_prob, scale = classifier
        out = G.classifier_guidance(out, log_prob, y, scale, process)
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
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x_shape[0],):
            raise ValueError(f"labels must have shape [{x_shape[0]}] (one per sample), got {y.shape}")
        if k and (y.min() < 0 or y.max() > k):
            raise ValueError(f"labels must be in [0, {k}] ({k} = unconditional), got values in "
                             f"[{y.min()}, {y.max()}]")
        if classifier is not None and (y.min() < 0 or y.max() >= classifier[2]):
            raise ValueError(f"labels must be in [0, {classifier[2]}) for the guidance "
                             f"classifier, got values in [{y.min()}, {y.max()}]")
        if not k and classifier is None:
            raise ValueError("labels were given but the model has no class conditioning "
                             "(model.conditional=False): drop them or pass a guidance classifier")


def make_sample_fn(model, process, par, sampler: str, num_steps: int, grid: str,
                   guidance_scale: float | None = None, classifier: tuple | None = None):
    """``fn(params, x_T, key, cond=None, known=None, mask=None) -> images``, jitted whole (one
    XLA program per shape). ``known``/``mask`` (1 = known): inpainting by replacement.
    ``classifier = (log_prob, scale, num_classes)`` adds classifier guidance."""
    clf = None if classifier is None else classifier[:2]

    def fn(params, x_T, key, cond, known, mask):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale, clf)
        if known is not None:
            denoise = G.inpaint(denoise, process, known, mask, jax.random.fold_in(key, 1))
        return dj_sample(denoise, process, x_T, sampler=sampler, num_steps=num_steps, key=key,
                         grid=grid)

    jitted = jax.jit(fn)

    def checked(params, x_T, key, cond=None, known=None, mask=None):
        check_sample_inputs(model, cond, guidance_scale, classifier, x_T.shape)
        if known is not None:
            mask = G.broadcast_mask(mask, known)
        return jitted(params, x_T, key, cond, known, mask)

    return checked


def make_repaint_fn(model, process, par, num_steps: int, resample: int, grid: str = "logsnr",
                    guidance_scale: float | None = None):
    """``fn(params, known, mask, key, cond=None)``: RePaint inpainting, jitted whole."""

    def fn(params, known, mask, key, cond):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale)
        return G.repaint(denoise, process, known, mask, key, num_steps, resample, grid)

    jitted = jax.jit(fn)

    def checked(params, known, mask, key, cond=None):
        check_sample_inputs(model, cond, guidance_scale, None, known.shape)
        return jitted(params, known, G.broadcast_mask(mask, known), key, cond)

    return checked


def make_sdedit_fn(model, process, par, sampler: str, num_steps: int, grid: str, strength: float,
                   guidance_scale: float | None = None):
    """``fn(params, x_init, key, cond=None)``: SDEdit at ``strength``, jitted whole."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")

    def fn(params, x_init, key, cond):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale)
        return G.sdedit(denoise, process, x_init, strength, key, sampler, num_steps, grid)

    jitted = jax.jit(fn)

    def checked(params, x_init, key, cond=None):
        check_sample_inputs(model, cond, guidance_scale, None, x_init.shape)
        return jitted(params, x_init, key, cond)

    return checked
