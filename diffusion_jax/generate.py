"""A trained workdir -> samples, with every control the library has: labels with classifier-free
guidance, a noise-conditional classifier's guidance, a low-resolution image, inpainting
(replacement, or RePaint resampling), SDEdit. What the ``sample`` command's flags mean lives here,
tested without a subprocess; the CLI only parses them.

    req = SampleRequest(num=16, labels="all", guidance=2.0)
    result = generate("runs/fm_cond", req)       # .images, .inputs, .nrow, .labels, .step
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffusion_jax import guidance
from diffusion_jax.conditioning import downsample
from diffusion_jax.data.sources import first_images, get_source
from diffusion_jax.experiment import Experiment
from diffusion_jax.learned_grids import load_learned
from diffusion_jax.samplers import default_grid
from diffusion_jax.methods.diffusion import Diffusion, check_sample_inputs, model_denoiser
from diffusion_jax.utils.images import load_images, make_mask
from diffusion_jax.utils.interpolate import slerp
from diffusion_jax.workdir import load, load_classifier, read_experiment


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """The ``sample`` command's options (``None``: the experiment's own setting)."""
    num: int = 64
    batch: int = 256                   # samples per compiled call (memory does not grow with num)
    seed: int = 0
    sampler: str | None = None         # a name (or, once --grid learned is read, a LearnedPC)
    steps: int | None = None
    grid: str | None = None            # a grid name, or "learned" (WORKDIR/grids, optimize-grid)
    labels: str | None = None          # "all" (one row per class), "K" or "a,b,c"
    guidance: float | None = None      # classifier-free guidance scale
    classifier: str | None = None      # a noise-conditional classifier workdir
    classifier_scale: float = 1.0
    init_image: str | None = None      # .png / .npz / .npy, or "test"
    mask: str | None = None            # center|left|right|top|bottom|random or a file
    resample: int = 1                  # RePaint resamplings per step (1: replacement)
    strength: float | None = None      # SDEdit
    low_res: str | None = None         # super-resolution input: file or "test"
    temperature: float | None = None   # flow / VAE: the latents' standard deviation
    interpolate: int = 0               # > 0: ``num`` rows of this many slerp steps (GAN/VAE/flow)


@dataclasses.dataclass
class Generated:
    images: np.ndarray
    inputs: np.ndarray | None   # what the samples were made from (masked / upsampled images)
    nrow: int | None
    labels: np.ndarray | None
    step: int


def check_request(req: SampleRequest) -> None:
    """Flag combinations that cannot run, before anything is loaded or compiled."""
    if req.num < 1:
        raise ValueError(f"--num must be >= 1, got {req.num}")
    if req.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {req.batch}")
    if req.steps is not None and req.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {req.steps} (omit it for the experiment's "
                         "own number of steps)")
    if req.strength is not None and not 0.0 <= req.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {req.strength}")
    if (req.strength is not None or req.mask) and not req.init_image:
        raise ValueError("--mask and --strength edit an image: pass --init-image FILE (or 'test')")
    if req.strength is not None and req.mask:
        raise ValueError("choose one of --mask (inpainting) and --strength (SDEdit)")
    if req.resample < 1:
        raise ValueError(f"--resample must be >= 1, got {req.resample}")
    if req.resample != 1 and not req.mask:
        raise ValueError("--resample is RePaint's option for inpainting: pass --mask too")
    if req.interpolate and req.interpolate < 2:
        raise ValueError(f"--interpolate {req.interpolate}: give at least 2 steps per row")
    if req.temperature is not None and req.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {req.temperature}")


# The flags only diffusion models read (the sample command of a GAN / VAE / flow refuses them).
DIFFUSION_FLAGS = {"sampler": None, "steps": None, "grid": None, "guidance": None,
                   "classifier": None, "init_image": None, "mask": None, "resample": 1,
                   "strength": None, "low_res": None}


def parse_labels(spec: str, num_classes: int, n: int) -> tuple[np.ndarray, int | None]:
    """``"all"``: ``n // K`` per class, one row each -> ``(labels, nrow)``; ``"K"``/``"a,b"``:
    those labels repeated to ``n``."""
    if spec == "all":
        per = max(n // num_classes, 1)
        return np.repeat(np.arange(num_classes), per), per
    try:
        vals = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"--labels {spec!r}: give 'all', a class number 0..{num_classes - 1}, "
                         "or numbers separated by commas") from None
    guidance.check_labels(np.array(vals), num_classes)
    return np.resize(np.array(vals), n), None


def _classifier(req: SampleRequest, exp: Experiment):
    if not req.classifier:
        return None
    clf, cparams, info = load_classifier(req.classifier)
    if not info["noise_conditional"]:
        raise ValueError(f"the classifier in {req.classifier} was trained on clean images; "
                         "classifier guidance needs a noise-conditional one (train one with "
                         f"--config.process.name={exp.config['process']['name']})")
    if info["process"] != exp.config["process"]["name"]:
        raise ValueError(f"the classifier was trained on process {info['process']!r} but the "
                         f"model uses {exp.config['process']['name']!r}: their times do not match")
    log_prob = lambda x, t: jax.nn.log_softmax(
        clf.apply({"params": cparams}, x, jnp.broadcast_to(t, x.shape[:1])))
    return log_prob, req.classifier_scale, info["num_classes"]


def _conditioning(req: SampleRequest, exp: Experiment, method: Diffusion, classifier, test):
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
    elif req.guidance is not None or classifier is not None:
        raise ValueError("guidance needs --labels (e.g. --labels all)")
    if cc.low_res_size:
        low = _low_res(req, exp, cc.low_res_size, n, test)
        n = len(low)
        cond["low_res"] = jnp.asarray(low)
        inputs = np.asarray(jax.image.resize(low, (n,) + exp.shape, "nearest"))
    elif req.low_res:
        raise ValueError("--low-res is for super-resolution models; this model has "
                         "model.low_res_size=0")
    if "y" in cond and len(cond["y"]) != n:
        cond["y"] = jnp.resize(cond["y"], (n,))
    return cond, n, nrow, inputs


def _low_res(req, exp, size: int, n: int, test) -> np.ndarray:
    if not req.low_res:
        raise ValueError(f"this is a super-resolution model ({size} -> {exp.shape[0]}): pass "
                         "--low-res FILE or --low-res test")
    if req.low_res == "test":
        return np.asarray(downsample(jnp.asarray(first_images(test(), n, exp.shape)), size))
    low = load_images(req.low_res, exp.shape[-1])
    if low.shape[1] != size:
        raise ValueError(f"--low-res images are {low.shape[1]}x{low.shape[2]}; this model takes "
                         f"{size}x{size}")
    n = len(low) if len(low) > 1 else n
    return np.resize(low, (n,) + low.shape[1:])


def _init_images(req: SampleRequest, exp: Experiment, n: int, test):
    if not req.init_image:
        return None
    if req.init_image == "test":
        return first_images(test(), n, exp.shape)
    init = load_images(req.init_image, exp.shape[-1])
    if init.shape[1:] != tuple(exp.shape):
        raise ValueError(f"--init-image is {init.shape[1:]}, the model makes {tuple(exp.shape)}")
    return np.resize(init, (n,) + init.shape[1:])


def generate(workdir: str, req: SampleRequest, out: str | None = None) -> Generated:
    """Samples from a workdir under every control of ``req``; all checks run before compiling.
    Samples are made ``req.batch`` at a time (one compiled call, reused; chunk ``i`` draws from
    ``fold_in(key, i)``) and checked for NaN/inf as they come; with ``out`` ending in ``.npy``
    each chunk is written to that file as soon as it is made."""
    check_request(req)
    exp = read_experiment(workdir)  # the checks below need only the experiment
    method = exp.method
    if not getattr(method, "generates", False):
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run, which does not generate "
                         "samples")
    test = lambda: get_source(exp.data.dataset, "test", exp.data.data_dir or None)
    if not isinstance(method, Diffusion):
        return _generate_family(workdir, exp, req, test, out)
    if req.temperature is not None or req.interpolate:
        raise ValueError("--temperature and --interpolate are for GAN / VAE / flow workdirs; "
                         f"{workdir} holds a diffusion model")
    if getattr(method, "pixel_shape", None) and (req.mask or req.strength is not None
                                                 or req.low_res or req.classifier):
        raise ValueError("--mask, --strength, --low-res and --classifier work on pixels; "
                         f"{workdir} is a latent diffusion model (it samples latents)")
    classifier = _classifier(req, exp)
    cond, n, nrow, inputs = _conditioning(req, exp, method, classifier, test)
    if req.guidance is not None and not method.conditioning.num_classes:
        raise ValueError("--guidance (classifier-free) needs a class-conditional model; this one "
                         "has no class conditioning. Use --classifier DIR for classifier guidance")
    init = _init_images(req, exp, n, test)
    mask = None
    if req.mask:
        mask = make_mask(req.mask, exp.shape, req.seed)
        if mask.shape[:2] != tuple(exp.shape[:2]) or mask.shape[-1] not in (1, exp.shape[-1]):
            raise ValueError(f"--mask {req.mask} is {mask.shape[0]}x{mask.shape[1]}x"
                             f"{mask.shape[-1]}; this model makes {'x'.join(map(str, exp.shape))} "
                             "images: give a mask of that size (1 or the image's channels)")
        inputs = init * mask  # unknown pixels shown mid-grey
    elif req.strength is not None:
        inputs = init
    b = min(req.batch, n)
    check_sample_inputs(method.model, _take(cond, 0, b, n), req.guidance, classifier,
                        (b,) + exp.shape)
    if req.grid == "learned":
        if req.strength is not None or req.resample > 1:
            raise ValueError("--grid learned is for sampling and replacement inpainting, not "
                             "for --strength or --resample")
        ts, solver = load_learned(workdir, req.sampler or method.sampler,
                                  req.steps or method.num_steps, exp.config["process"]["name"])
        req = dataclasses.replace(req, grid=ts, sampler=solver)
    _, params, step = load(workdir)
    images = (np.lib.format.open_memmap(out, "w+", np.float32, (n,) + exp.shape)
              if out is not None and str(out).endswith(".npy")
              else np.empty((n,) + exp.shape, np.float32))
    key = jax.random.key(req.seed)
    for i, start in enumerate(tqdm(range(0, n, b), desc="sample", disable=n <= b)):
        chunk = np.asarray(_run(method, params, req, _take(cond, start, b, n),
                                _take(init, start, b, n), mask, classifier,
                                jax.random.fold_in(key, i), b))[: n - start]
        if not np.all(np.isfinite(chunk)):
            raise FloatingPointError(
                f"samples {start}..{start + len(chunk) - 1} from {workdir} (checkpoint step "
                f"{step}) hold NaN/inf: the parameters or the sampler diverged")
        images[start: start + len(chunk)] = chunk
    if isinstance(images, np.memmap):
        images.flush()
    y = np.asarray(cond["y"]) if "y" in cond else None
    return Generated(images, inputs, nrow, y, step)


def _generate_family(workdir, exp: Experiment, req: SampleRequest, test, out) -> Generated:
    """Samples (or slerp rows) of a GAN, VAE or flow: one network evaluation per image."""
    method, name = exp.method, exp.method_name
    few_step = name == "consistency"
    for flag, default in DIFFUSION_FLAGS.items():
        if flag == "steps" and few_step:
            continue
        if getattr(req, flag) != default:
            raise ValueError(f"--{flag.replace('_', '-')} is an option of diffusion sampling; "
                             f"{workdir} holds a {name} (its options: --num --batch --seed "
                             "--out" + (" --steps" if few_step else " --interpolate")
                             + (" --labels" if name == "gan" else "")
                             + (" --temperature" if name in ("vae", "flow") else "") + ")")
    if req.temperature is not None and name not in ("vae", "flow"):
        raise ValueError(f"--temperature is for flows and VAEs, not a {name}")
    if req.interpolate and few_step:
        raise ValueError("--interpolate is for GAN / VAE / flow latents; a consistency model "
                         "has none")
    if few_step and req.steps and req.steps > method.max_steps:
        print(f"warning: --steps {req.steps} is more than the {method.max_steps} scales this "
              f"consistency model was trained on; more steps than that do not help")
    k = getattr(method, "num_classes", 0)
    if req.labels and not k:
        raise ValueError(f"--labels needs a class-conditional model; {workdir} holds an "
                         f"unconditional {name}")
    labels, nrow = (parse_labels(req.labels, k, req.num) if req.labels else (None, None))
    n = len(labels) if labels is not None else req.num
    _, params, step = load(workdir)
    key = jax.random.key(req.seed)
    temp = {} if req.temperature is None else {"temperature": req.temperature}
    if few_step and req.steps:
        temp["steps"] = req.steps
    if req.interpolate:
        images = np.asarray(_interpolation_rows(method, params, key, n, req.interpolate, test, labels))
        nrow = req.interpolate
    else:
        b = min(req.batch, n)
        images = (np.lib.format.open_memmap(out, "w+", np.float32, (n,) + exp.shape)
                  if out is not None and str(out).endswith(".npy")
                  else np.empty((n,) + exp.shape, np.float32))
        for i, start in enumerate(tqdm(range(0, n, b), desc="sample", disable=n <= b)):
            kw = dict(temp)
            if labels is not None:
                kw["cond"] = {"y": _take(labels, start, b, n)}
            chunk = np.asarray(method.sample(params, jax.random.fold_in(key, i), b, **kw))
            images[start: start + b] = chunk[: n - start]
    if not np.all(np.isfinite(images)):
        raise FloatingPointError(f"samples from {workdir} (checkpoint step {step}) hold NaN/inf: "
                                 "the parameters diverged")
    if isinstance(images, np.memmap):
        images.flush()
    return Generated(images, None, nrow, labels, step)


def _interpolation_rows(method, params, key, rows: int, steps: int, test, labels):
    """``rows`` x ``steps`` images along slerp paths: between the latents of consecutive test
    images (VAE: posterior means; flow: its exact latents) or between random latents (GAN)."""
    t = jnp.linspace(0.0, 1.0, steps)
    if method.name == "gan":
        ka, kb = jax.random.split(key)
        za, zb = (jax.random.normal(k, (rows, method.z_dim)) for k in (ka, kb))
        z = slerp(za, zb, t).reshape(rows * steps, -1)
        y = None if labels is None else jnp.repeat(jnp.asarray(labels), steps)
        return method.sample_from(params, z, y)
    x = jnp.asarray(first_images(test(), 2 * rows, method.shape))
    if method.name == "vae":
        z = method.encode(params, x)
        path = slerp(z[:rows], z[rows:], t)
        return method.decode(params, path.reshape((rows * steps,) + z.shape[1:]))
    zs = method.encode(params, x)  # the flow: one latent per level, slerped jointly
    flat = jnp.concatenate([z.reshape(2 * rows, -1) for z in zs], -1)
    path = slerp(flat[:rows], flat[rows:], t).reshape(rows * steps, -1)
    parts, i = [], 0
    for z in zs:
        size = math.prod(z.shape[1:])
        parts.append(path[:, i: i + size].reshape((rows * steps,) + z.shape[1:]))
        i += size
    return method.decode(params, parts)


def _take(x, start: int, b: int, n: int):
    """Rows ``start .. start+b`` of an array (or a dict of them) with ``n`` rows; the last chunk is
    padded with its first rows so that every chunk has one shape (one compile)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _take(v, start, b, n) for k, v in x.items()} or None
    part = x[start: start + b]
    if len(part) < b:
        part = np.concatenate([np.asarray(part)] * (-(-b // len(part))))[:b]
    return jnp.asarray(part)


def _run(method: Diffusion, params, req: SampleRequest, cond, init, mask, classifier, key, b):
    steps = req.steps or method.num_steps
    grid = req.grid or method.grid
    if grid == "default" and req.mask and req.resample > 1:
        grid = "logsnr"  # RePaint's ancestral steps
    elif grid == "default" and req.strength is not None:
        grid = default_grid(req.sampler or method.sampler)
    if req.mask and req.resample > 1:
        fn = make_repaint_fn(method, steps, req.resample, grid, req.guidance)
        return fn(params, init, jnp.asarray(mask), key, cond)
    if req.strength is not None:
        fn = make_sdedit_fn(method, req.sampler or method.sampler, steps, grid, req.strength,
                            req.guidance)
        return fn(params, init, key, cond)
    fn = method.sample_fn(req.sampler, steps, grid, req.guidance, classifier)
    x_T = method.process.prior_sample(key, (b,) + method.shape)
    if req.mask:
        return fn(params, x_T, key, cond, init, jnp.asarray(mask))
    return fn(params, x_T, key, cond)


@functools.lru_cache(maxsize=16)  # one compile per setting, reused by every chunk
def make_repaint_fn(method: Diffusion, num_steps: int, resample: int, grid: str = "logsnr",
                    guidance_scale: float | None = None):
    """``fn(params, known, mask, key, cond=None)``: RePaint inpainting, jitted whole."""

    def fn(params, known, mask, key, cond):
        denoise = method.denoiser(params, cond, guidance_scale)
        return guidance.repaint(denoise, method.process, known, mask, key, num_steps, resample, grid)

    jitted = jax.jit(fn)

    def checked(params, known, mask, key, cond=None):
        check_sample_inputs(method.model, cond, guidance_scale, None, known.shape)
        return jitted(params, known, guidance.broadcast_mask(mask, known), key, cond)

    return checked


@functools.lru_cache(maxsize=16)
def make_sdedit_fn(method: Diffusion, sampler: str, num_steps: int, grid: str, strength: float,
                   guidance_scale: float | None = None):
    """``fn(params, x_init, key, cond=None)``: SDEdit at ``strength``, jitted whole."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")

    def fn(params, x_init, key, cond):
        denoise = method.denoiser(params, cond, guidance_scale)
        return guidance.sdedit(denoise, method.process, x_init, strength, key, sampler, num_steps,
                               grid)

    jitted = jax.jit(fn)

    def checked(params, x_init, key, cond=None):
        check_sample_inputs(method.model, cond, guidance_scale, None, x_init.shape)
        return jitted(params, x_init, key, cond)

    return checked


__all__ = ["SampleRequest", "Generated", "generate", "check_request", "parse_labels",
           "make_repaint_fn", "make_sdedit_fn", "model_denoiser"]
