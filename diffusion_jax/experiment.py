"""An experiment config (``ConfigDict``) translated, once, into frozen dataclasses and a method.

This is the only module that reads a ``ConfigDict``: the loop, the workdir reader, evaluation and
the CLI receive an ``Experiment``. Defaults live in the dataclasses below (and in the model and
loss dataclasses they wrap); an experiment file sets values. Unknown keys get a "did you mean"
error and missing required keys are named, before anything is compiled.

Sections: ``seed``, ``method`` (a name in ``METHODS``), ``mesh`` ({axis: size}),
``sharding_rules`` (optional logical-axis rules; ``DEFAULT_RULES``), ``data``, ``model``,
``optimizer``, ``train``, ``sample``, and per method: diffusion ``process``, ``parameterization``,
``loss``; classifier ``process`` (``name=""``: a clean-image classifier), ``augment``; gan
``gan``; vae ``vae``; flow ``flow``. A section of another method is refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from diffusion_jax import parameterization as parameterizations
from diffusion_jax import processes
from diffusion_jax.conditioning import Conditioning
from diffusion_jax.losses import LossConfig
from diffusion_jax.consistency import CONSISTENCY_LOSSES
from diffusion_jax.methods.consistency import CONSISTENCY_MODES, ConsistencyMethod
from diffusion_jax.methods.latent import LatentDiffusion
from diffusion_jax.methods.gan import GAN_LOSSES
from diffusion_jax.methods import GAN, ClassifierMethod, Diffusion, FlowMethod, Method, VAEMethod
from diffusion_jax.models import MLP, UNet, UNetConfig, check_image_size
from diffusion_jax.models.classifier import Classifier
from diffusion_jax.models.dit import DiT, DiTConfig, check_patch_size
from diffusion_jax.models.layers import REMAT_POLICIES, remat_policy
from diffusion_jax.models.flow import Glow, check_flow_size
from diffusion_jax.models.gan import Discriminator, Generator, check_gan_size
from diffusion_jax.models.vae import VAE
from diffusion_jax.optim import make_optimizer

# Logical axis names used by the models -> mesh axes. An experiment may replace them
# (``config.sharding_rules``); mesh axes absent from a mesh are dropped for that mesh.
DEFAULT_RULES = (("batch", ("data", "fsdp")), ("conv_out", "fsdp"), ("mlp", "fsdp"),
                 ("kv", "fsdp"), ("conv_in", None), ("embed", None), ("heads", None),
                 ("patch", None))


class ConfigError(ValueError):
    """An experiment that cannot be built: the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset: str
    data_dir: str = ""
    image_size: int = 0
    channels: int = 0
    dim: int = 0              # > 0: vector data of this size (synthetic mixtures)
    num_classes: int = 0
    random_flip: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: ``(dim,)`` for vector data, else ``(size, size, channels)``."""
        return (self.dim,) if self.dim else (self.image_size, self.image_size, self.channels)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    axes: tuple[tuple[str, int], ...] = (("data", -1),)
    rules: tuple = DEFAULT_RULES


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    lr: float
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    b2: float = 0.999
    b1: float = 0.9


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    steps: int
    batch_size: int
    ema_decay: float = 0.999
    ema_start: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 0
    keep: int = 3
    time_limit_minutes: float = 0.0
    fid_every: int = 0          # training-time FD every this many steps (0: off)
    fid_num: int = 500
    fid_classifier: str = ""    # its feature extractor: a classifier workdir ...
    fid_inception: str = ""     # ... or Inception-v3 weights (.npz)


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    num: int = 64
    grid: str = "default"  # the sampler's own (samplers.DEFAULT_GRIDS)
    guidance: float | None = None   # classifier-free guidance scale (class-conditional models)


@dataclasses.dataclass(frozen=True)
class Experiment:
    method_name: str
    seed: int
    data: DataSpec
    mesh: MeshSpec
    optimizer: OptimizerSpec
    train: TrainSpec
    sample: SampleSpec
    method: Method
    config: dict  # the config as JSON data: stored with every checkpoint

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


def _plain(v):
    """ConfigDicts and dicts -> dicts, lists -> tuples, recursively (JSON configs come back with
    lists where the experiment had tuples)."""
    if isinstance(v, (ConfigDict, dict)):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_plain(x) for x in v)
    return v


def _typed(cls, section, where: str, **fixed):
    """``cls(**section, **fixed)`` with unknown keys ("did you mean") and missing required keys
    named as ``where.key``."""
    given = {} if section is None else _plain(section)
    skip = set(fixed) | ({"parent", "name"} if issubclass(cls, nn.Module) else set())
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    names = [f.name for f in fields]
    for key in given:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where}.{near[0]}?" if near else ""
            raise ConfigError(f"unknown config key {where}.{key}{hint} (valid: {', '.join(names)})")
    for f in fields:
        if (f.name not in given and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise ConfigError(f"the experiment is missing the required field {where}.{f.name}")
    return cls(**given, **fixed)


def _section(config: ConfigDict, name: str, required: bool = True):
    if name in config:
        return config[name]
    if required:
        raise ConfigError(f"the experiment is missing the required section {name!r}")
    return None


def _split(section, keys: tuple[str, ...]) -> tuple[dict, dict]:
    d = _plain(section) if section is not None else {}
    return {k: d[k] for k in keys if k in d}, {k: v for k, v in d.items() if k not in keys}


def _mesh(config: ConfigDict) -> MeshSpec:
    axes = tuple((str(k), int(v)) for k, v in _plain(_section(config, "mesh", False) or {}).items())
    rules = _plain(config.get("sharding_rules")) or DEFAULT_RULES
    mesh_axes = {a for a, _ in axes} if axes else {"data"}
    if "sharding_rules" in config:  # the user's own rules must name axes the mesh has
        for logical, target in rules:
            for ax in (target if isinstance(target, tuple) else (target,) if target else ()):
                if ax not in mesh_axes:
                    raise ConfigError(f"sharding rule {logical!r} -> {ax!r} names a mesh axis the "
                                      f"mesh {dict(axes)} does not have; mesh axes: "
                                      f"{', '.join(sorted(mesh_axes))}")
    return MeshSpec(axes or MeshSpec.axes, tuple(rules))


def _diffusion_model(section, data: DataSpec):
    common, arch = _split(section, ("name", "dtype", "conditional", "cond_drop"))
    name = common.get("name", "unet")
    conditional = common.get("conditional", False)
    if conditional and not data.num_classes:
        raise ConfigError("model.conditional=True needs data.num_classes > 0")
    num_classes = data.num_classes if conditional else 0
    if name == "mlp":
        model = _typed(MLP, arch, "model")
    elif name == "dit":
        dcfg = _typed(DiTConfig, arch, "model", num_classes=num_classes)
        try:
            check_patch_size(data.image_size, dcfg.patch_size)
            remat_policy(dcfg.remat) if dcfg.remat != "none" else None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if dcfg.hidden_size % dcfg.num_heads or dcfg.hidden_size % 4:
            raise ConfigError(f"model.hidden_size={dcfg.hidden_size} must be divisible by "
                              f"model.num_heads={dcfg.num_heads} and by 4")
        model = DiT(dcfg, dtype=jnp.dtype(common.get("dtype", "float32")))
    elif name == "unet":
        ucfg = _typed(UNetConfig, arch, "model", num_classes=num_classes)
        if ucfg.remat != "none" and ucfg.remat not in REMAT_POLICIES:
            raise ConfigError(f"unknown model.remat={ucfg.remat!r}; valid: none, "
                              f"{', '.join(REMAT_POLICIES)}")
        check_image_size(data.image_size, ucfg.channel_mult)
        if ucfg.low_res_size and data.image_size % ucfg.low_res_size:
            raise ConfigError(f"model.low_res_size={ucfg.low_res_size} must divide "
                              f"data.image_size={data.image_size}")
        model = UNet(ucfg, dtype=jnp.dtype(common.get("dtype", "float32")))
    else:
        raise ConfigError(f"unknown model {name!r}; valid: 'unet', 'dit', 'mlp'")
    cond = Conditioning(num_classes=num_classes, context_dim=arch.get("context_dim", 0),
                        low_res_size=arch.get("low_res_size", 0),
                        **({"drop_prob": common["cond_drop"]} if "cond_drop" in common else {}))
    return model, cond


def _build_diffusion(config, data, opt, train, sample, tx) -> Diffusion:
    latent = _plain(config.get("latent")) if "latent" in config else None
    model_data = data
    if latent:
        ae_dir, ae_exp, latent_shape = _autoencoder(latent, data)
        model_data = dataclasses.replace(data, image_size=latent_shape[0],
                                         channels=latent_shape[-1])
    model, cond = _diffusion_model(_section(config, "model"), model_data)
    pkw, pz = _plain(_section(config, "process")), _plain(_section(config, "parameterization"))
    process = processes.make_process(pkw.pop("name"), **pkw)
    par = parameterizations.make_parameterization(pz.pop("name"), **pz)
    loss = _typed(LossConfig, _section(config, "loss", False), "loss")
    args = (model, process, par, loss, tx, model_data.shape, cond, train.ema_decay,
            train.ema_start, sample.sampler, sample.num_steps, sample.grid, sample.guidance)
    if not latent:
        return Diffusion(*args)
    if cond.low_res_size or cond.context_dim:
        raise ConfigError("latent diffusion supports class conditioning only (no low_res_size "
                          "or context_dim)")
    loader = _params_loader(ae_dir, ae_exp)
    scale = float(latent.get("scale", 0.0)) or latent_scale(ae_dir, ae_exp.method.model, data)
    return LatentDiffusion(*args, autoencoder=ae_exp.method.model, ae_loader=loader,
                           scale=scale, pixel_shape=data.shape)


def _autoencoder(latent: dict, data: DataSpec):
    """The ``latent`` section's autoencoder workdir, checked against this experiment's data."""
    unknown = set(latent) - {"autoencoder", "scale"}
    if unknown:
        raise ConfigError(f"unknown config key latent.{sorted(unknown)[0]} (valid: autoencoder, "
                          "scale)")
    ae_dir = latent.get("autoencoder", "")
    ae = _stored_experiment(ae_dir, "latent.autoencoder")
    if ae.method_name != "vae":
        raise ConfigError(f"latent.autoencoder={ae_dir!r} holds a {ae.method_name!r} run; it "
                          "must be a VAE (experiments/fashion_mnist_vae.py with "
                          "--config.model.latent_dim=0)")
    if ae.method.model.latent_dim:
        raise ConfigError(f"latent.autoencoder={ae_dir!r} has a flat {ae.method.model.latent_dim}"
                          "-d latent; latent diffusion needs a spatial one (model.latent_dim=0)")
    if ae.data.shape != data.shape:
        raise ConfigError(f"latent.autoencoder={ae_dir!r} was trained on images of shape "
                          f"{ae.data.shape}; this experiment's data has shape {data.shape}")
    return ae_dir, ae, ae.method.model.latent_shape


def _stored_experiment(path: str, field: str) -> "Experiment":
    from pathlib import Path

    from diffusion_jax.checkpoint import Checkpointer

    if not path or not (Path(path) / "checkpoints").is_dir() or \
            Checkpointer(path).latest_step() is None:
        raise ConfigError(f"{field}={path!r} holds no checkpoint: train it first")
    return from_config(stored(Checkpointer(path).read_config()))


def _params_loader(path: str, exp: "Experiment"):
    """``() -> the workdir's EMA parameters`` (host arrays), read without an optimizer state."""
    def load():
        from diffusion_jax.checkpoint import Checkpointer
        from diffusion_jax.parallel import make_mesh

        mesh = make_mesh((("data", 1),), devices=jax.devices()[:1])
        abstract, _ = exp.method.abstract_state(mesh, exp.mesh.rules)
        ck = Checkpointer(path)
        out = ck.restore_subtree(ck.latest_step(), {"ema_params": abstract.ema_params})
        return jax.device_get(out["ema_params"])
    return load


LATENT_SCALE_IMAGES = 2048


@functools.lru_cache(maxsize=4)
def latent_scale(ae_dir: str, ae_model, data: DataSpec) -> float:
    """``1 / std`` of the autoencoder's posterior means over the first ``LATENT_SCALE_IMAGES``
    training images: the factor that makes the latents unit-variance (Rombach et al. 2022)."""
    import numpy as np

    from diffusion_jax.data.sources import first_images, get_source

    params = _params_loader(ae_dir, _stored_experiment(ae_dir, "latent.autoencoder"))()
    src = get_source(data.dataset, "train", data.data_dir or None)
    n = min(LATENT_SCALE_IMAGES, len(src))
    x = first_images(src, n, data.shape)
    enc = jax.jit(lambda p, x: ae_model.apply({"params": p}, x, method=VAE.encode)[0])
    z = np.concatenate([np.asarray(enc(params, x[i: i + 256])) for i in range(0, n, 256)])
    scale = float(1.0 / z.std())
    print(f"latent scale {scale:.4f} (1/std of {n} training latents of {ae_dir})")
    return scale


def _build_classifier(config, data, opt, train, sample, tx) -> ClassifierMethod:
    if not data.num_classes:
        raise ConfigError("a classifier needs data.num_classes > 0")
    pname = _plain(_section(config, "process", False) or {}).get("name", "")
    process = processes.make_process(pname) if pname else None
    model = _typed(Classifier, _section(config, "model"), "model", num_classes=data.num_classes,
                   noise_conditional=process is not None)
    aug = _plain(_section(config, "augment", False) or {})
    return ClassifierMethod(model, tx, data.shape, process, aug.get("shift", 0), train.ema_decay)


@dataclasses.dataclass(frozen=True)
class GANSpec:
    loss: str = "hinge"          # non_saturating | hinge | wgan_gp
    n_critic: int = 1            # discriminator updates per generator update
    gp_weight: float = 10.0      # WGAN-GP's lambda
    r1_gamma: float = 0.0        # > 0: R1 penalty gamma/2 * E||grad D(x)||^2 on real images
    d_lr: float = 0.0            # the discriminator's learning rate (TTUR); 0: optimizer.lr
    z_dim: int = 128


@dataclasses.dataclass(frozen=True)
class GANModelSpec:
    ch: int = 64                 # the generator's width at full resolution
    d_ch: int = 64               # the discriminator's
    levels: int = 2              # stride-2 stages
    spectral_norm: bool = True   # on every discriminator layer
    conditional: bool = False    # class-conditional (projection discriminator)


@dataclasses.dataclass(frozen=True)
class VAESpec:
    beta: float = 1.0            # KL weight (small for latent diffusion's autoencoder)
    kl_warmup: int = 0           # steps of linear KL warm-up
    iw_samples: int = 64         # k of the importance-weighted bound


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    temperature: float = 0.7     # sampling temperature (std of the latents)


def _opt_for(config, train: TrainSpec, opt: OptimizerSpec, lr: float | None = None):
    return make_optimizer(lr or opt.lr, opt.warmup_steps, train.steps, opt.schedule,
                          opt.weight_decay, opt.b2, opt.grad_clip, opt.grad_accum, opt.b1)


def _build_gan(config, data, opt, train, sample, tx) -> GAN:
    if data.dim:
        raise ConfigError("the GAN is for images; data.dim is set (vector data)")
    g = _typed(GANSpec, _section(config, "gan", False), "gan")
    if g.loss not in GAN_LOSSES:
        raise ConfigError(f"unknown gan.loss={g.loss!r}; valid: {', '.join(GAN_LOSSES)}")
    if g.n_critic < 1:
        raise ConfigError(f"gan.n_critic={g.n_critic} must be >= 1")
    m = _typed(GANModelSpec, _section(config, "model"), "model")
    try:
        check_gan_size(data.image_size, m.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if m.conditional and not data.num_classes:
        raise ConfigError("model.conditional=True needs data.num_classes > 0")
    k = data.num_classes if m.conditional else 0
    gen = Generator(data.image_size, data.channels, m.ch, m.levels, k)
    disc = Discriminator(m.d_ch, m.levels, k, m.spectral_norm)
    return GAN(gen, disc, tx, _opt_for(config, train, opt, g.d_lr or None), data.shape, g.z_dim,
               g.loss, g.n_critic, g.gp_weight, g.r1_gamma, train.ema_decay, train.ema_start)


def _build_vae(config, data, opt, train, sample, tx) -> VAEMethod:
    if data.dim:
        raise ConfigError("the VAE is for images; data.dim is set (vector data)")
    v = _typed(VAESpec, _section(config, "vae", False), "vae")
    model = _typed(VAE, _section(config, "model"), "model", image_size=data.image_size,
                   channels=data.channels)
    try:
        check_gan_size(data.image_size, model.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return VAEMethod(model, tx, data.shape, v.beta, v.kl_warmup, v.iw_samples, train.ema_decay,
                     train.ema_start)


def _build_flow(config, data, opt, train, sample, tx) -> FlowMethod:
    if data.dim:
        raise ConfigError("the flow is for images; data.dim is set (vector data)")
    f = _typed(FlowSpec, _section(config, "flow", False), "flow")
    model = _typed(Glow, _section(config, "model"), "model")
    try:
        check_flow_size(data.image_size, model.levels)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return FlowMethod(model, tx, data.shape, f.temperature, train.ema_decay, train.ema_start)


@dataclasses.dataclass(frozen=True)
class ConsistencySpec:
    mode: str = "cd"             # cd (distillation from a teacher workdir) | ct (no teacher)
    teacher: str = ""            # CD: a trained diffusion workdir (its model, process and
                                 # parameterization are used; the experiment need not repeat them)
    solver: str = "heun"         # CD: the project sampler taking the teacher's one ODE step
    num_scales: int = 18         # CD: Karras discretisation of [t_min, t_max]
    loss: str = ""               # l2 | pseudo_huber ("": l2 for CD, pseudo_huber for CT)
    s0: int = 10                 # CT curriculum: scales at the start ...
    s1: int = 1280               # ... and at the end
    sample_steps: int = 1        # evaluations of `sample` (CLI: sample --steps)


def _teacher_experiment(path: str, data: DataSpec) -> "Experiment":
    """The teacher workdir's stored experiment, checked against the student's data."""
    teacher = _stored_experiment(path, "consistency.teacher")
    if teacher.method_name != "diffusion" or isinstance(teacher.method, LatentDiffusion):
        raise ConfigError(f"consistency.teacher={path!r} holds a {teacher.method_name!r} run; "
                          "the teacher must be a (pixel-space) diffusion model")
    if teacher.data.shape != data.shape:
        raise ConfigError(f"consistency.teacher={path!r} was trained on data of shape "
                          f"{teacher.data.shape}; this experiment's data has shape {data.shape}")
    if teacher.method.conditioning.active:
        raise ConfigError(f"consistency.teacher={path!r} is conditional; distillation of "
                          "conditional teachers is not supported yet")
    return teacher


def _build_consistency(config, data, opt, train, sample, tx) -> ConsistencyMethod:
    c = _typed(ConsistencySpec, _section(config, "consistency"), "consistency")
    if c.mode not in CONSISTENCY_MODES:
        raise ConfigError(f"unknown consistency.mode={c.mode!r}; valid: "
                          f"{', '.join(CONSISTENCY_MODES)}")
    loss = c.loss or ("l2" if c.mode == "cd" else "pseudo_huber")
    if loss not in CONSISTENCY_LOSSES:
        raise ConfigError(f"unknown consistency.loss={loss!r}; valid: "
                          f"{', '.join(CONSISTENCY_LOSSES)}")
    if c.sample_steps < 1:
        raise ConfigError(f"consistency.sample_steps={c.sample_steps} must be >= 1")
    loader = None
    if c.mode == "cd":
        if not c.teacher:
            raise ConfigError("consistency.mode='cd' needs consistency.teacher=WORKDIR (a "
                              "trained diffusion model), or use consistency.mode='ct'")
        teacher = _teacher_experiment(c.teacher, data)
        t = teacher.method
        for section in ("process", "parameterization"):
            if section in config and _plain(config[section]) != teacher.config[section]:
                raise ConfigError(f"{section}={_plain(config[section])} differs from the "
                                  f"teacher's {teacher.config[section]} ({c.teacher}): the "
                                  f"student uses the teacher's; remove the {section!r} section")
        model, process, par = t.model, t.process, t.parameterization
        loader = _params_loader(c.teacher, teacher)
        try:
            from diffusion_jax.samplers import resolve_sampler
            resolve_sampler(c.solver)
        except ValueError as e:
            raise ConfigError(f"consistency.solver: {e}") from None
    else:
        model, cond = _diffusion_model(_section(config, "model"), data)
        if cond.active:
            raise ConfigError("consistency training of conditional models is not supported yet: "
                              "set model.conditional=False")
        pkw, pz = _plain(_section(config, "process")), _plain(_section(config, "parameterization"))
        process = processes.make_process(pkw.pop("name"), **pkw)
        par = parameterizations.make_parameterization(pz.pop("name"), **pz)
    return ConsistencyMethod(model, process, par, tx, data.shape, c.mode, loader, c.solver,
                             c.num_scales, loss, c.s0, c.s1, train.steps, c.sample_steps,
                             train.ema_decay)


# The one name -> builder table of methods (the CLI and ``from_config`` use it), and the sections
# only some methods read: a section of another method is refused, with the field named.
METHODS = {"diffusion": _build_diffusion, "classifier": _build_classifier, "gan": _build_gan,
           "vae": _build_vae, "flow": _build_flow, "consistency": _build_consistency}
METHOD_SECTIONS = {"diffusion": ("process", "parameterization", "loss", "latent"),
                   "classifier": ("process", "augment"), "gan": ("gan",), "vae": ("vae",),
                   "flow": ("flow",),
                   "consistency": ("consistency", "process", "parameterization")}


def _check_sections(config, name: str) -> None:
    for section in sorted({s for v in METHOD_SECTIONS.values() for s in v}):
        if section in config and section not in METHOD_SECTIONS[name]:
            owners = [m for m, v in METHOD_SECTIONS.items() if section in v]
            keys = list(_plain(config[section]) or {}) if isinstance(config[section], ConfigDict) else []
            field = f"{section}.{keys[0]}" if keys else section
            raise ConfigError(f"{field} is a setting of the {'/'.join(owners)} method; this "
                              f"experiment's method is {name!r}: remove the {section!r} section")


def from_config(config: ConfigDict) -> Experiment:
    """The typed experiment; every error is raised here, before anything is compiled."""
    name = config.get("method", "diffusion")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    _check_sections(config, name)
    data = _typed(DataSpec, _section(config, "data"), "data")
    opt = _typed(OptimizerSpec, _section(config, "optimizer"), "optimizer")
    train = _typed(TrainSpec, _section(config, "train"), "train")
    sample = _typed(SampleSpec, _section(config, "sample", False), "sample")
    _check_train(train)
    tx = _opt_for(config, train, opt)
    method = METHODS[name](config, data, opt, train, sample, tx)
    return Experiment(name, int(config.get("seed", 0)), data, _mesh(config), opt, train, sample,
                      method, json.loads(config.to_json()))


def _check_train(t: TrainSpec) -> None:
    for field in ("steps", "batch_size", "log_every", "ckpt_every", "keep"):
        if getattr(t, field) < (0 if field == "steps" else 1):
            raise ConfigError(f"train.{field}={getattr(t, field)} must be >= 1")
    if t.fid_every and not (t.fid_classifier or t.fid_inception):
        raise ConfigError(f"train.fid_every={t.fid_every} needs a feature extractor: set "
                          "train.fid_classifier=DIR (a classifier workdir) or "
                          "train.fid_inception=W.npz")


def stored(config_json: dict) -> Any:
    """The ``ConfigDict`` of a config stored as JSON with a checkpoint (tuples restored)."""
    return ConfigDict(_plain(config_json))
