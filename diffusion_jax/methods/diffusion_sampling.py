"""What a ``SampleRequest`` means for a diffusion model, and the compiled functions it runs.

``plan(method, req, env)`` checks every control (labels and classifier-free guidance, a
noise-conditional classifier's guidance, a low-resolution image, inpainting by replacement or
RePaint, SDEdit, a learned grid) before anything is compiled, and returns the ``Sampling`` whose
chunk function ``generate`` and ``eval`` run. The three factories (plain, RePaint, SDEdit) share
one jit-and-check wrapper and are cached, so every chunk reuses one compile.

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

from diffusion_jax import guidance
from diffusion_jax.compress import materialize
from diffusion_jax.conditioning import downsample
from diffusion_jax.methods.base import Sampling, SampleRequest, SamplingEnv, parse_labels, take
from diffusion_jax.parallel import batch_sharding, make_mesh
from diffusion_jax.parameterization import make_denoiser
from diffusion_jax.samplers import check_cacheable, default_grid, resolve_sampler
from diffusion_jax.samplers import invert as run_invert
from diffusion_jax.samplers import sample as run_sampler
from diffusion_jax.utils.images import load_images, make_mask


def _num_classes(model) -> int:
    return (getattr(getattr(model, "config", None), "num_classes", 0)
            or getattr(model, "num_classes", 0))


def model_denoiser(model, process, par, params, cond: dict | None = None,
                   guidance_scale: float | None = None, classifier: tuple | None = None) -> Callable:
    """The network as ``denoise(x, t) -> x0_hat`` with its conditioning bound.

    ``guidance_scale``: classifier-free guidance over ``cond["y"]`` (null label = num_classes);
    ``classifier=(log_prob, scale)``: classifier guidance with ``log_prob(x_t, t) -> [B, K]`` and
    labels ``cond["y"]`` (for an unconditional model the labels are not passed to the network)."""
    cond = dict(cond or {})
    # compressed kernels (int8/int4, low-rank) become dense here, once per compiled call, outside
    # the sampler's loop: XLA does not hoist a size-increasing dequantisation out of a while loop
    params = materialize(params)
    net = lambda x, t, **c: model.apply({"params": params}, x, t, **c)
    denoise = make_denoiser(net, process, par)
    k = _num_classes(model)
    y = cond.get("y")
    if not k:
        cond.pop("y", None)
    if guidance_scale is None:
        cond.pop("null_context", None)
        out = lambda x, t: denoise(x, t, **cond)
    elif "null_context" in cond:  # text: the prompt and the negative prompt in one call
        rest = {n: v for n, v in cond.items() if n not in ("context", "null_context")}
        both = jnp.concatenate([cond["context"], cond["null_context"]])
        out = guidance.guided_pair(lambda x, t: denoise(x, t, context=both, **rest),
                                   guidance_scale)
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
    if guidance_scale is not None and ("null_ids" in cond or "null_context" in cond):
        return  # text guidance: the prompts were checked when they were tokenized
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


def _jit_checked(fn: Callable, model, guidance_scale, classifier, shape_of: Callable,
                 prepare: Callable = lambda *a: a) -> Callable:
    """``fn`` jitted, behind the input checks every factory makes (``shape_of(args)``: the
    batch's shape; ``prepare(*args)``: the arguments the compiled function takes). The jitted
    function is made at the first call: planning a request compiles and traces nothing."""
    jitted = []

    def checked(*args):
        check_sample_inputs(model, args[-1] if len(args) else None, guidance_scale, classifier,
                            shape_of(args))
        if not jitted:
            jitted.append(jax.jit(fn))
        return jitted[0](*shard_batch(prepare(*args), shape_of(args)[0]))

    return checked


def shard_batch(args: tuple, batch: int) -> tuple:
    """Every array argument whose leading dimension is the batch, laid out over all devices
    along it (a ``data`` mesh), so one sampling call runs on every chip; the parameters keep
    their own layout. Batches the device count does not divide stay where they are, and so does
    everything in a multi-process run (each host samples its own rows: a global array could not
    be read back on one host)."""
    n = jax.device_count()
    if n == 1 or batch % n or jax.process_count() > 1:
        return args
    sharding = batch_sharding(make_mesh((("data", n),)))
    put = lambda a: (jax.device_put(a, sharding) if isinstance(a, (jax.Array, np.ndarray))
                     and a.ndim and a.shape[0] == batch else a)
    return tuple(a if i == 0 else jax.tree_util.tree_map(put, a) for i, a in enumerate(args))


@functools.lru_cache(maxsize=64)
def make_sample_fn(model, process, par, sampler, num_steps: int, grid,
                   guidance_scale: float | None = None, classifier: tuple | None = None,
                   cache_every: int = 1):
    """``fn(params, x_T, key, cond=None, known=None, mask=None) -> images``, jitted whole (one
    XLA program per shape). ``grid``: a grid name, or the times themselves (a tuple: a learned
    grid). ``known``/``mask`` (1 = known): inpainting by replacement.
    ``classifier = (log_prob, scale, num_classes)`` adds classifier guidance; ``cache_every``:
    the driver's step caching."""
    clf = None if classifier is None else classifier[:2]

    def fn(params, x_T, key, known, mask, cond):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale, clf)
        if known is not None:
            denoise = guidance.inpaint(denoise, process, known, mask, jax.random.fold_in(key, 1))
        # inpainting's output is its last denoised estimate, whose known part is exact
        where = dict(ts=np.asarray(grid)) if isinstance(grid, tuple) else dict(grid=grid)
        return run_sampler(denoise, process, x_T, sampler=sampler, num_steps=num_steps, key=key,
                           final="ode" if known is None else "denoise", cache_every=cache_every,
                           **where)

    def prepare(params, x_T, key, known, mask, cond):
        mask = None if known is None else guidance.broadcast_mask(mask, known)
        return params, x_T, key, known, mask, cond

    checked = _jit_checked(fn, model, guidance_scale, classifier, lambda a: a[1].shape, prepare)
    return lambda params, x_T, key, cond=None, known=None, mask=None: checked(
        params, x_T, key, known, mask, cond)


@functools.lru_cache(maxsize=16)
def make_repaint_fn(method, num_steps: int, resample: int, grid: str = "logsnr",
                    guidance_scale: float | None = None):
    """``fn(params, known, mask, key, cond=None)``: RePaint inpainting, jitted whole."""

    def fn(params, known, mask, key, cond):
        denoise = method.denoiser(params, cond, guidance_scale)
        return guidance.repaint(denoise, method.process, known, mask, key, num_steps, resample,
                                grid)

    prepare = lambda p, known, mask, key, cond: (p, known, guidance.broadcast_mask(mask, known),
                                                 key, cond)
    checked = _jit_checked(fn, method.model, guidance_scale, None, lambda a: a[1].shape, prepare)
    return lambda params, known, mask, key, cond=None: checked(params, known, mask, key, cond)


@functools.lru_cache(maxsize=16)
def make_sdedit_fn(method, sampler: str, num_steps: int, grid: str, strength: float,
                   guidance_scale: float | None = None):
    """``fn(params, x_init, key, cond=None)``: SDEdit at ``strength``, jitted whole."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")

    def fn(params, x_init, key, cond):
        denoise = method.denoiser(params, cond, guidance_scale)
        return guidance.sdedit(denoise, method.process, x_init, strength, key, sampler, num_steps,
                               grid)

    checked = _jit_checked(fn, method.model, guidance_scale, None, lambda a: a[1].shape)
    return lambda params, x_init, key, cond=None: checked(params, x_init, key, cond)


@functools.lru_cache(maxsize=16)
def make_invert_fn(model, process, par, sampler, num_steps: int, grid,
                   guidance_scale: float | None = None):
    """``fn(params, x0, cond=None) -> x_T``: ``samplers.invert`` with the model's denoiser (the
    same conditioning and guidance the regeneration uses), jitted whole."""

    def fn(params, x0, cond):
        denoise = model_denoiser(model, process, par, params, cond, guidance_scale)
        where = dict(ts=np.asarray(grid)) if isinstance(grid, tuple) else dict(grid=grid)
        return run_invert(denoise, process, x0, sampler=sampler, num_steps=num_steps, **where)

    checked = _jit_checked(fn, model, guidance_scale, None, lambda a: a[1].shape)
    return lambda params, x0, cond=None: checked(params, x0, cond)


# -- a request, checked and planned ----------------------------------------------------------

def plan(method, req: SampleRequest, env: SamplingEnv) -> Sampling:
    """Every check of ``req`` against ``method``, then its chunk function (nothing compiled)."""
    latent = method.sample_shape != tuple(method.shape)
    if latent and (req.low_res or req.classifier):
        raise ValueError("--low-res and --classifier work on pixels; this is a latent diffusion "
                         "model (it samples latents)")
    if req.prompts is not None and req.guidance is None and method.guidance:
        req = dataclasses.replace(req, guidance=method.guidance)  # the pipeline's default
    text = method.takes_prompts
    if text and req.prompts is None:
        raise ValueError("this is a text-to-image model: pass --prompt TEXT (or --prompts FILE, "
                         "one prompt per line)")
    if req.guidance is not None and not method.conditioning.num_classes and not text:
        raise ValueError("--guidance (classifier-free) needs a class-conditional model; this one "
                         "has no class conditioning. Use --classifier DIR for classifier guidance")
    if req.guidance is not None and not method.null_class and not text:
        raise ValueError("--guidance (classifier-free) needs an unconditional (null) class, and "
                         "this model was trained without one: sample with --labels alone")
    _check_cache(req, method)
    learned_grid = req.grid == "learned" or str(req.grid).endswith(".json")
    if req.invert and (resolve_sampler(req.sampler or method.sampler).stochastic or learned_grid):
        raise ValueError(f"--invert runs the sampler up its grid: it needs a deterministic sampler "
                         f"on a named grid (ddim, dpmpp_2m, unipc, heun, ...); got --sampler "
                         f"{req.sampler or method.sampler}"
                         + (f" --grid {req.grid}" if req.grid else ""))
    classifier = _classifier(req, method, env)
    cond, n, nrow, inputs = _conditioning(req, method, classifier, env)
    pixels = tuple(method.sample_shape)
    init = _init_images(req, pixels, n, env, pixels[0] // method.shape[0])
    mask = None
    if req.mask:
        mask = make_mask(req.mask, pixels, req.seed)
        if mask.shape[:2] != pixels[:2] or mask.shape[-1] not in (1, pixels[-1]):
            raise ValueError(f"--mask {req.mask} is {mask.shape[0]}x{mask.shape[1]}x"
                             f"{mask.shape[-1]}; this model makes "
                             f"{'x'.join(map(str, pixels))} images: give a mask of that "
                             "size (1 or the image's channels)")
        inputs = init * mask  # unknown pixels shown mid-grey
    elif req.strength is not None or req.invert:
        inputs = init
    if latent and init is not None:  # edits happen on the latents the sampler works on
        init = method.encode_images(init)
        if mask is not None:  # a latent is known where all the pixels it covers are
            f = pixels[0] // method.shape[0]
            m = mask.min(axis=-1, keepdims=True).reshape(method.shape[0], f, method.shape[1], f, 1)
            mask = m.min(axis=(1, 3))
    b = min(req.batch, n)
    check_sample_inputs(method.model, take(cond, 0, b, n), req.guidance, classifier,
                        (b,) + tuple(method.shape))
    req = _learned(req, method, env)
    run = _runner(method, req, mask, classifier, b)
    draw = lambda params, key, start: run(params, take(cond, start, b, n),
                                          take(init, start, b, n), key)
    y = np.asarray(cond["y"]) if "y" in cond else None
    return Sampling(n, b, draw, inputs, nrow, y)


def _check_cache(req: SampleRequest, method) -> None:
    """``--cache-every``: a sampler with one network call per step, and plain sampling or
    replacement inpainting (not SDEdit, RePaint or inversion)."""
    if req.cache_every is None:
        return
    if req.cache_every < 1:
        raise ValueError(f"--cache-every must be >= 1 (1: no caching), got {req.cache_every}")
    if req.strength is not None or req.resample > 1 or req.invert:
        raise ValueError("--cache-every works with plain sampling and --mask inpainting, not "
                         "with --strength, --resample or --invert")
    sampler = req.sampler or method.sampler
    check_cacheable(resolve_sampler(sampler), sampler)


def _learned(req: SampleRequest, method, env: SamplingEnv) -> SampleRequest:
    """``--grid learned``: the stored grid (and, for ``learned_pc``, its solver) in the request;
    ``--grid FILE.json``: a grid file's (its sampler and steps unless the request names them)."""
    if isinstance(req.grid, str) and req.grid.endswith(".json"):
        if req.strength is not None or req.resample > 1:
            raise ValueError("a learned grid is for sampling and replacement inpainting, not for "
                             "--strength or --resample")
        ts, solver, steps = env.grid_file(req.grid, req.sampler, req.steps, method.process.name)
        return dataclasses.replace(req, grid=ts, sampler=solver, steps=steps)
    if req.grid != "learned":
        return req
    if req.strength is not None or req.resample > 1:
        raise ValueError("--grid learned is for sampling and replacement inpainting, not for "
                         "--strength or --resample")
    ts, solver = env.learned(req.sampler or method.sampler, req.steps or method.num_steps,
                             method.process.name)
    return dataclasses.replace(req, grid=ts, sampler=solver)


def _runner(method, req: SampleRequest, mask, classifier, b: int) -> Callable:
    """``run(params, cond, init, key)`` for one chunk of ``b`` samples."""
    steps = req.steps or method.num_steps
    grid = req.grid or method.grid
    sampler = req.sampler or method.sampler
    edit = lambda fn: (lambda params, cond, init, key: method.decode_samples(
        fn(params, method.condition(cond), init, key)))
    if req.mask and req.resample > 1:
        fn = make_repaint_fn(method, steps, req.resample, "logsnr" if grid == "default" else grid,
                             req.guidance)
        return edit(lambda params, cond, init, key: fn(params, init, jnp.asarray(mask), key, cond))
    if req.strength is not None:
        grid = default_grid(sampler) if grid == "default" else grid
        fn = make_sdedit_fn(method, sampler, steps, grid, req.strength, req.guidance)
        return edit(lambda params, cond, init, key: fn(params, init, key, cond))
    if req.mask and method.sample_shape != tuple(method.shape):  # latent inpainting
        raw = make_sample_fn(method.model, method.process, method.parameterization, sampler,
                             steps, grid, req.guidance, classifier, req.cache_every or 1)
        return edit(lambda params, cond, init, key: raw(
            params, method.process.prior_sample(key, (b,) + tuple(method.shape)), key, cond,
            init, jnp.asarray(mask)))
    fn = method.sample_fn(req.sampler, steps, grid, req.guidance, classifier,
                          cache_every=req.cache_every or 1)
    inverse = make_invert_fn(method.model, method.process, method.parameterization, sampler,
                             steps, grid, req.guidance) if req.invert else None

    def run(params, cond, init, key):
        if inverse is not None:  # the image's own noise, under the same conditioning
            x_T = inverse(params, init, method.condition(cond))
        else:
            x_T = method.process.prior_sample(key, (b,) + tuple(method.shape))
        if req.mask:
            return fn(params, x_T, key, cond, init, jnp.asarray(mask))
        return fn(params, x_T, key, cond)

    return run


def _classifier(req: SampleRequest, method, env: SamplingEnv):
    if not req.classifier:
        return None
    clf, cparams, info = env.classifier(req.classifier)
    name = method.process.name
    if not info["noise_conditional"]:
        raise ValueError(f"the classifier in {req.classifier} was trained on clean images; "
                         "classifier guidance needs a noise-conditional one (train one with "
                         f"--config.process.name={name})")
    if info["process"] != name:
        raise ValueError(f"the classifier was trained on process {info['process']!r} but the "
                         f"model uses {name!r}: their times do not match")
    log_prob = lambda x, t: jax.nn.log_softmax(
        clf.apply({"params": cparams}, x, jnp.broadcast_to(t, x.shape[:1])))
    return log_prob, req.classifier_scale, info["num_classes"]


def _conditioning(req: SampleRequest, method, classifier, env: SamplingEnv):
    """``(cond, n, nrow, inputs)`` from the label and low-res flags."""
    n, nrow, cond, inputs, cc = req.num, None, {}, None, method.conditioning
    if req.labels is not None:
        k = cc.num_classes or (classifier[2] if classifier else 0)
        if not k:
            raise ValueError("--labels needs a class-conditional model (this one was trained with "
                             "model.conditional=False) or a guidance --classifier")
        y, nrow = parse_labels(req.labels, k, n)
        n = len(y)
        cond["y"] = jnp.asarray(y, jnp.int32)
    elif req.prompts is not None:
        cond.update(method.prompt_ids(req.prompts, req.negative_prompt, n))
        if req.guidance is None:
            cond.pop("null_ids")
    elif req.guidance is not None or classifier is not None:
        raise ValueError("guidance needs --labels (e.g. --labels all)")
    if cc.low_res_size:
        low = _low_res(req, method.shape, cc.low_res_size, n, env)
        n = len(low)
        cond["low_res"] = jnp.asarray(low)
        inputs = np.asarray(jax.image.resize(low, (n,) + tuple(method.shape), "nearest"))
    elif req.low_res:
        raise ValueError("--low-res is for super-resolution models; this model has "
                         "model.low_res_size=0")
    if "y" in cond and len(cond["y"]) != n:
        cond["y"] = jnp.resize(cond["y"], (n,))
    return cond, n, nrow, inputs


def _low_res(req: SampleRequest, shape, size: int, n: int, env: SamplingEnv) -> np.ndarray:
    if not req.low_res:
        raise ValueError(f"this is a super-resolution model ({size} -> {shape[0]}): pass "
                         "--low-res FILE or --low-res test")
    if req.low_res == "test":
        return np.asarray(downsample(jnp.asarray(env.test_images(n)), size))
    low = load_images(req.low_res, shape[-1])
    if low.shape[1] != size:
        raise ValueError(f"--low-res images are {low.shape[1]}x{low.shape[2]}; this model takes "
                         f"{size}x{size}")
    n = len(low) if len(low) > 1 else n
    return np.resize(low, (n,) + low.shape[1:])


def _init_images(req: SampleRequest, shape, n: int, env: SamplingEnv, factor: int = 1):
    """The image an edit starts from (``--init-image``, or ``--invert``'s), at ``shape``;
    ``factor``: a latent model's pixels per latent along a side."""
    path, flag = (req.invert, "--invert") if req.invert else (req.init_image, "--init-image")
    if not path:
        return None
    if path == "test":
        return env.test_images(n)
    init = load_images(path, shape[-1])
    h, w = init.shape[1:3]
    if factor > 1 and (h % factor or w % factor):
        near = lambda v: max(factor, round(v / factor) * factor)
        raise ValueError(f"{flag} {path} is {h}x{w}; the autoencoder works on multiples of "
                         f"{factor}: resize it to {near(h)}x{near(w)} (this model makes "
                         f"{shape[0]}x{shape[1]})")
    if init.shape[1:] != tuple(shape):
        raise ValueError(f"{flag} is {init.shape[1:]}, the model makes {tuple(shape)}")
    return np.resize(init, (n,) + init.shape[1:])
