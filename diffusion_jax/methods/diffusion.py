"""Diffusion as a method: a denoising loss on one network (with EMA), sampling with any sampler,
classifier-free guidance and the other controls of ``diffusion_jax.guidance``, the PF-ODE
likelihood; its settings (``process``, ``parameterization``, ``loss``, ``model``) and ``build``.

    method = Diffusion(model, process, parameterization, loss, tx, shape=(28, 28, 1), ...)
    images = method.sample(params, key, 16)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import parameterization as parameterizations
from diffusion_jax import processes
from diffusion_jax.conditioning import Conditioning, downsample
from diffusion_jax.compress import Compression
from diffusion_jax.likelihood import bits_per_dim, dequantize, log_likelihood, to_integers
from diffusion_jax.losses import LossConfig, denoising_loss
from diffusion_jax.methods.base import MethodBase, SampleRequest, Sampling, SamplingEnv, balanced_labels
from diffusion_jax.methods.diffusion_sampling import make_sample_fn, model_denoiser, plan
from diffusion_jax.methods.state import SingleNetwork, TrainState, apply_gradients, ema_decay_at
from diffusion_jax.models import MLP, UNet, UNetConfig, check_image_size
from diffusion_jax.models.dit import DiT, DiTConfig, check_patch_size
from diffusion_jax.models.layers import REMAT_POLICIES, remat_policy
from diffusion_jax.parameterization import Parameterization
from diffusion_jax.processes import Process
from diffusion_jax.samplers import steps_for_budget, total_nfe
from diffusion_jax.settings import BuildContext, ConfigError, DataSpec, check_rule, split, typed

SECTIONS = ("process", "parameterization", "loss", "latent", "compress")
SAMPLE_OPTIONS = frozenset({"sampler", "steps", "grid", "labels", "guidance", "classifier",
                            "classifier_scale", "init_image", "mask", "resample", "strength",
                            "low_res", "invert", "quantize", "prune", "low_rank",
                            "cache_every"})


@dataclasses.dataclass(frozen=True, eq=False)
class Diffusion(SingleNetwork, MethodBase):
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
    null_class: bool = True   # label num_classes is the unconditional one (CFG needs it)
    params_loader: Callable | None = None  # () -> starting parameters (init_from), host arrays
    name: str = "diffusion"
    # compression-aware training (QAT, pruning): the loss sees the compressed kernels
    train_compression: Compression | None = None
    sample_options = SAMPLE_OPTIONS
    likelihood = "pf_ode"
    likelihood_options = frozenset({"trace", "rtol", "atol"})

    @property
    def num_classes(self) -> int:
        return self.conditioning.num_classes

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

    def init(self, key) -> TrainState:
        """A fresh state; with ``params_loader`` (``init_from``) its parameters and EMA start as
        the loaded ones (read on the host, also when the loop traces ``init`` under jit)."""
        state = SingleNetwork.init(self, key)
        if self.params_loader is None:
            return state
        shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                        state.params)
        params = jax.pure_callback(
            lambda: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), self.params_loader()),
            shapes)
        return TrainState(state.step, params, params, self.tx.init(params))

    # -- training ----------------------------------------------------------------------------
    def train_step(self, state: TrainState, batch: dict, key: jax.Array):
        """Pure; the per-step key is ``fold_in(key, step)``, so a resumed run draws exactly the
        noise the uninterrupted run would have drawn."""
        key = jax.random.fold_in(key, state.step)
        # the conditioning's dropout has its own stream: the loss's noise does not depend on it
        cond = self.conditioning(batch, jax.random.fold_in(key, 0x7FFFFFFF))
        seen = (lambda p: p) if self.train_compression is None else self.train_compression.fake
        apply = lambda p, x, t, c, train, rngs: self.model.apply(
            {"params": seen(p)}, x, t, train=train, rngs=rngs, **(c or {}))

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
                  classifier: tuple | None = None, cache_every: int = 1) -> Callable:
        """The jitted ``fn(params, x_T, key, cond=None, known=None, mask=None)`` (cached)."""
        return make_sample_fn(self.model, self.process, self.parameterization,
                              sampler or self.sampler, num_steps or self.num_steps,
                              grid or self.grid, guidance_scale, classifier, cache_every)

    def prompt_ids(self, prompts, negative: str | None, n: int) -> dict:
        """Token ids of a text-to-image model's prompts (``{"ids", "null_ids"}``)."""
        raise ValueError("--prompt needs a text-to-image model (a pretrained pipeline folder "
                         "with a text encoder); this one "
                         + ("is class-conditional: use --labels" if self.conditioning.num_classes
                            else "has no text conditioning"))

    # what edits (img2img, inpainting, inversion) run through: identities for pixel models; a
    # latent model encodes the images, decodes its samples and prepares its conditioning
    def encode_images(self, images):
        """Images NHWC in [-1, 1] -> what the sampler works on."""
        return images

    def decode_samples(self, x):
        """What the sampler made -> images."""
        return x

    def condition(self, cond: dict | None) -> dict | None:
        """The request's conditioning as the network takes it (e.g. token ids -> a context)."""
        return cond

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

    def denoiser(self, params, cond: dict | None = None, guidance_scale: float | None = None,
                 classifier: tuple | None = None) -> Callable:
        return model_denoiser(self.model, self.process, self.parameterization, params, cond,
                              guidance_scale, classifier)

    # -- the capabilities callers ask for ----------------------------------------------------
    def sampling(self, req: SampleRequest, env: SamplingEnv) -> Sampling:
        """``--quantize``/``--prune``/``--low-rank``: the network takes the compressed tree,
        which ``prepare`` makes from the loaded parameters."""
        comp = Compression(req.quantize, req.prune, req.low_rank)
        if not comp.active:
            return plan(self, req, env)
        method = dataclasses.replace(self, model=comp.model(self.model))
        bare = dataclasses.replace(req, quantize=None, prune=None, low_rank=None)
        return dataclasses.replace(plan(method, bare, env), prepare=comp.params)

    def nfe(self, req: SampleRequest) -> int:
        return total_nfe(req.sampler or self.sampler, req.steps or self.num_steps,
                         cache_every=req.cache_every or 1)

    def network_fn(self, params, batch: int):
        """The network as the denoiser calls it, ``(x_t [B, ...], t [B][, y [B]]) -> output``
        (class labels for class-conditional models), with example arrays at ``batch``."""
        c = self.conditioning
        if c.context_dim or c.low_res_size:
            raise ValueError("export writes unconditional and class-conditional networks; this "
                             "one also takes a context or a low-resolution image")
        x = jnp.zeros((batch,) + tuple(self.shape), jnp.float32)
        t = jnp.full((batch,), 0.5 * (self.process.t_min + self.process.t_max), jnp.float32)
        apply = lambda x, t, *y: self.model.apply({"params": params}, x, t, *y)
        return apply, ((x, t, jnp.zeros((batch,), jnp.int32)) if c.num_classes else (x, t))

    def eval_requests(self, samplers, nfes, grids, guidance):
        """Samplers x NFE budgets x grids; class-balanced labels for class-conditional models."""
        k, rows = self.num_classes, []
        if guidance is not None and not k:
            raise ValueError("--guidance (classifier-free) needs a class-conditional model; this "
                             "one has no class conditioning")
        if guidance is not None and not self.null_class:
            raise ValueError("--guidance (classifier-free) needs an unconditional (null) class, "
                             "and this model was trained without one: evaluate without --guidance")
        labels = balanced_labels(k) if k else None
        for s_name in samplers:
            for nfe in nfes:
                steps = steps_for_budget(s_name, nfe)
                for grid in grids if steps is not None else ():
                    row = {"sampler": s_name, "nfe": nfe, "steps": steps, "grid": grid,
                           **({"guidance": guidance} if k else {})}
                    rows.append((row, SampleRequest(sampler=s_name, steps=steps, grid=grid,
                                                    labels=labels, guidance=guidance)))
        return rows

    def bits_per_dim(self, params, x, key, trace: str = "rademacher", rtol: float = 1e-4,
                     atol: float = 1e-4) -> dict:
        """Per-image ``{"pf_ode": bits/dim, "nfe": ...}`` of 8-bit images ``x`` in [-1, 1],
        uniformly dequantised, through the probability-flow ODE (Hutchinson's trace; a
        class-conditional model's null label: the unconditional likelihood)."""
        c = self.conditioning
        if c.low_res_size or c.context_dim:
            raise ValueError("likelihood is for unconditional or class-conditional models (this "
                             "one needs a low-res image or a context per example)")
        return _pf_ode_bpd(self, trace, rtol, atol)(params, x, key)


@functools.lru_cache(maxsize=8)
def _pf_ode_bpd(method: Diffusion, trace: str, rtol: float, atol: float):
    dim = math.prod(method.shape)

    @jax.jit
    def fn(params, x, key):
        k_deq, k_tr = jax.random.split(key)
        xd = dequantize(k_deq, to_integers(x))
        lp, stats = log_likelihood(method.denoiser(params), method.process, xd, key=k_tr,
                                   trace=trace, rtol=rtol, atol=atol)
        return {"pf_ode": bits_per_dim(lp, dim), "nfe": stats["nfe"]}

    return fn


# -- settings and build ------------------------------------------------------------------------

def denoiser_network(section, data: DataSpec):
    """``(network, conditioning)`` from the ``model`` section: a U-Net, a DiT or an MLP."""
    common, arch = split(section, ("name", "dtype", "conditional", "cond_drop"))
    for key, field in (("dtype", "model.dtype"), ("cond_drop", "model.cond_drop")):
        if key in common:
            check_rule(field, common[key])
    name = common.get("name", "unet")
    conditional = common.get("conditional", False)
    if not isinstance(conditional, bool):
        raise ConfigError(f"model.conditional={conditional!r} is not true or false")
    if conditional and not data.num_classes:
        raise ConfigError("model.conditional=True needs data.num_classes > 0")
    num_classes = data.num_classes if conditional else 0
    dtype = jnp.dtype(common.get("dtype", "float32"))
    if name == "mlp":
        if arch.get("context_dim") or arch.get("low_res_size"):
            raise ConfigError("model.name='mlp' is unconditional or class-conditional: remove "
                              "model.context_dim / model.low_res_size (or use model.name='unet')")
        model = typed(MLP, arch, "model", num_classes=num_classes)
    elif name == "dit":
        model = DiT(_dit_config(arch, data, num_classes), dtype=dtype)
    elif name == "unet":
        model = UNet(_unet_config(arch, data, num_classes), dtype=dtype)
    else:
        raise ConfigError(f"unknown model {name!r}; valid: 'unet', 'dit', 'mlp'")
    cond = Conditioning(num_classes=num_classes, context_dim=arch.get("context_dim", 0),
                        low_res_size=arch.get("low_res_size", 0),
                        **({"drop_prob": common["cond_drop"]} if "cond_drop" in common else {}))
    return model, cond


def _dit_config(arch: dict, data: DataSpec, num_classes: int) -> DiTConfig:
    dcfg = typed(DiTConfig, arch, "model", num_classes=num_classes)
    try:
        check_patch_size(data.image_size, dcfg.patch_size)
        remat_policy(dcfg.remat) if dcfg.remat != "none" else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dcfg.hidden_size % dcfg.num_heads or dcfg.hidden_size % 4:
        raise ConfigError(f"model.hidden_size={dcfg.hidden_size} must be divisible by "
                          f"model.num_heads={dcfg.num_heads} and by 4")
    return dcfg


def _unet_config(arch: dict, data: DataSpec, num_classes: int) -> UNetConfig:
    ucfg = typed(UNetConfig, arch, "model", num_classes=num_classes)
    if ucfg.remat != "none" and ucfg.remat not in REMAT_POLICIES:
        raise ConfigError(f"unknown model.remat={ucfg.remat!r}; valid: none, "
                          f"{', '.join(REMAT_POLICIES)}")
    check_image_size(data.image_size, ucfg.channel_mult)
    for i, mult in enumerate(ucfg.channel_mult):  # attention splits a level's channels in heads
        width = ucfg.channels * mult
        if data.image_size // 2 ** i in ucfg.attn_resolutions and width % ucfg.num_heads:
            raise ConfigError(f"model.num_heads={ucfg.num_heads} must divide the {width} "
                              f"channels of the attention level at resolution "
                              f"{data.image_size // 2 ** i}")
    if ucfg.low_res_size and data.image_size % ucfg.low_res_size:
        raise ConfigError(f"model.low_res_size={ucfg.low_res_size} must divide "
                          f"data.image_size={data.image_size}")
    return ucfg


def process_and_parameterization(ctx: BuildContext) -> tuple[Process, Parameterization]:
    """The ``process`` and ``parameterization`` sections, built."""
    pkw, pz = ctx.section("process"), ctx.section("parameterization")
    process = processes.make_process(pkw.pop("name"), **pkw)
    par = parameterizations.make_parameterization(pz.pop("name"), **pz)
    if isinstance(par, parameterizations.VelocityPrediction) and not isinstance(
            process, processes.Flow):
        raise ConfigError(f"parameterization.name='velocity' predicts eps - x0, the velocity of "
                          f"the linear interpolant: it needs process.name='flow', not "
                          f"{process.name!r} (use 'v' there)")
    return process, par


def build(ctx: BuildContext, data: DataSpec | None = None, cls=None, **extra) -> Diffusion:
    """The diffusion method (``latent`` section: latent diffusion, built by ``methods.latent``;
    ``data``/``cls``/``extra`` are its latent shape, class and fields)."""
    if data is None and ctx.section("latent", False):
        # a real cycle: LatentDiffusion is a Diffusion, and its builder calls this one
        from diffusion_jax.methods import latent
        return latent.build(ctx)
    data = data or ctx.data
    init_from = ctx.config.get("init_from", "")
    loss = ctx.typed(LossConfig, "loss")
    t, s = ctx.train, ctx.sample
    if init_from and data is ctx.data:
        run = _init_run(ctx, init_from)
        if run.experiment.method.sample_shape != tuple(run.experiment.method.shape):
            return _latent_finetune(ctx, run, loss)
        model, process, par, cond, extra = _init_from(ctx, run, extra)
    elif s.prompts:
        raise ConfigError("sample.prompts is for fine-tuning a text-to-image pipeline "
                          "(init_from=a Stable Diffusion folder); this model takes no prompts")
    else:
        model, cond = denoiser_network(ctx.section("model"), data)
        process, par = process_and_parameterization(ctx)
    comp = ctx.typed(CompressSpec, "compress")
    if comp.quantize or comp.prune:
        try:
            extra = {**extra, "train_compression": Compression(comp.quantize or None,
                                                                comp.prune or None)}
        except ValueError as e:
            raise ConfigError(f"compress: {e}") from None
    return (cls or Diffusion)(model, process, par, loss, ctx.tx, data.shape, cond, t.ema_decay,
                              t.ema_start, s.sampler, s.num_steps, s.grid, s.guidance, **extra)


@dataclasses.dataclass(frozen=True)
class CompressSpec:
    """Compression-aware training: the loss sees the kernels as ``sample --quantize/--prune``
    will compress them (straight-through gradients); e.g. int4 QAT from a trained run."""
    quantize: str = ""       # "" or a compress.MODES name
    prune: float = 0.0       # 0 or a sparsity in (0, 1)


def teacher_run(ctx: BuildContext, path: str, field: str, labels: bool = False):
    """A distillation teacher (``field=WORKDIR``): an unconditional (``labels``: or
    class-conditional) pixel-space diffusion run on this experiment's data; a
    ``process``/``parameterization`` section that differs from the teacher's is refused (the
    student uses the teacher's)."""
    teacher = ctx.stored(path, field)
    exp = teacher.experiment
    if exp.method_name != "diffusion" or exp.method.sample_shape != tuple(exp.method.shape):
        raise ConfigError(f"{field}={path!r} holds a {exp.method_name!r} run; the teacher must "
                          "be a (pixel-space) diffusion model")
    if exp.data.shape != ctx.data.shape:
        raise ConfigError(f"{field}={path!r} was trained on data of shape {exp.data.shape}; this "
                          f"experiment's data has shape {ctx.data.shape}")
    cond = exp.method.conditioning
    if cond.active and not (labels and cond.num_classes and not cond.context_dim
                            and not cond.low_res_size):
        kind = "unconditional or class-conditional" if labels else "unconditional"
        raise ConfigError(f"{field}={path!r} is conditional; this distillation takes {kind} "
                          "teachers")
    if cond.num_classes and ctx.data.num_classes != cond.num_classes:
        raise ConfigError(f"{field}={path!r} has {cond.num_classes} classes, the data "
                          f"{ctx.data.num_classes or 'none'}")
    for section in ("process", "parameterization"):
        mine = ctx.section(section, False)
        if mine is not None and mine != exp.config[section]:
            raise ConfigError(f"{section}={mine} differs from the teacher's "
                              f"{exp.config[section]} ({path}): the student uses the teacher's; "
                              f"remove the {section!r} section")
    return teacher


def _init_run(ctx: BuildContext, path: str):
    """``init_from=DIR``'s stored run, checked: a diffusion model that makes the data's images."""
    if not isinstance(path, str):
        raise ConfigError(f"init_from={path!r} is not a folder path")
    run = ctx.stored(path, "init_from")
    src = run.experiment.method
    if not isinstance(src, Diffusion):
        raise ConfigError(f"init_from={path!r} holds a {run.experiment.method_name!r} model; "
                          "fine-tuning starts from a diffusion model")
    if tuple(src.sample_shape) != tuple(ctx.data.shape):
        raise ConfigError(f"init_from={path!r} makes {tuple(src.sample_shape)} images but the "
                          f"data is {tuple(ctx.data.shape)}: use data of the model's size and "
                          "channels (data.image_size, data.channels)")
    if src.num_classes and ctx.data.num_classes != src.num_classes:
        raise ConfigError(f"init_from={path!r} has {src.num_classes} classes, the data "
                          f"{ctx.data.num_classes}")
    replaced = [n for n in ("model", "process", "parameterization") if n in ctx.config]
    if replaced:
        print(f"note: init_from={path}: its network, process and parameterization replace the "
              f"experiment's {', '.join(replaced)} section(s)"
              + (" (model.cond_drop is kept)" if "model" in replaced else ""), file=sys.stderr)
    return run


def _init_from(ctx: BuildContext, run, extra: dict):
    """A pixel model's network, process and parameterization, its parameters as the start."""
    src = run.experiment.method
    extra = {**extra, "params_loader": run.load_params, "null_class": src.null_class}
    return src.model, src.process, src.parameterization, src.conditioning, extra


def _latent_finetune(ctx: BuildContext, run, loss: LossConfig) -> Diffusion:
    """A latent model (a Stable Diffusion / DiT / LDM folder, or a workdir that fine-tuned one)
    as the run's method: its denoiser trains from the folder's weights with the experiment's
    optimizer, loss, EMA and sampling defaults; the autoencoder and text encoder stay frozen.
    ``model.cond_drop`` drops captions to the empty prompt (labels to the null class)."""
    src = run.experiment.method
    drop = ctx.config.get("model", {}).get("cond_drop", 0.0)
    if not isinstance(drop, (int, float)) or isinstance(drop, bool):
        raise ConfigError(f"model.cond_drop={drop!r} must be a number in [0, 1)")
    check_rule("model.cond_drop", drop)
    text = bool(src.takes_prompts)
    t, s = ctx.train, ctx.sample
    if s.prompts and not text:
        raise ConfigError(f"sample.prompts is for text-to-image models; init_from={run.path!r} "
                          "takes no prompts")
    return dataclasses.replace(
        src, loss=loss, tx=ctx.tx, ema_decay=t.ema_decay, ema_start=t.ema_start,
        sampler=s.sampler, num_steps=s.num_steps, grid=s.grid,
        guidance=src.guidance if s.guidance is None else s.guidance,
        params_loader=run.load_params, caption_drop=drop if text else 0.0,
        preview_prompts=tuple(s.prompts),
        conditioning=dataclasses.replace(src.conditioning, drop_prob=0.0 if text else drop))
