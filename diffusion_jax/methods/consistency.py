"""Consistency models as a method: distillation from a trained diffusion teacher (CD) or
training from data alone (CT, iCT's recipe), sampled in 1, 2, 4, ... network evaluations.

    method = ConsistencyMethod(model, process, par, tx, shape, mode="cd",
                               teacher_loader=load_teacher_ema)

The train state holds the student, its EMA (CD's target network and the sampling parameters)
and, for CD, the frozen teacher's parameters (the student starts as a copy of them). The
functions themselves live in ``diffusion_jax.consistency_math``.

Class-conditional models (a class-conditional teacher for CD/ECT, ``model.conditional=True`` for
CT) take the labels in every network call; labels are dropped to the null class with the
conditioning's probability, so the model is also unconditional. CD with ``guidance=w`` distils
the teacher's classifier-free guided ODE (``D(x, null) + w (D(x, y) - D(x, null))``): the
student samples guided in one evaluation, with no guidance at sampling time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffusion_jax import consistency_math as C
from diffusion_jax.conditioning import Conditioning
from diffusion_jax.methods import diffusion
from diffusion_jax.methods.base import (MethodBase, SampleRequest, StepsSampling,
                                       class_rows_preview)
from diffusion_jax.methods.state import (apply_gradients, opt_shardings, param_shardings, replicated,
                                         with_shardings)
from diffusion_jax.parameterization import Parameterization, make_denoiser
from diffusion_jax.processes import Process
from diffusion_jax.samplers import make_grid, resolve_sampler
from diffusion_jax.settings import BuildContext, ConfigError

CONSISTENCY_MODES = ("cd", "ct", "ect")
SECTIONS = ("consistency", "process", "parameterization")


@flax.struct.dataclass
class ConsistencyState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    teacher: Any  # the frozen teacher's parameters (CD); {} for CT


@dataclasses.dataclass(frozen=True, eq=False)
class ConsistencyMethod(MethodBase):
    """``num_scales``: CD's discretisation of ``[t_min, t_max]`` (Karras grid); ``s0``/``s1``: CT's
    curriculum of scales; ``sample_steps``: the default number of evaluations of ``sample``."""
    model: Any
    process: Process
    parameterization: Parameterization
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    mode: str = "cd"
    teacher_loader: Callable | None = None   # () -> the teacher's parameters (CD)
    solver: str = "heun"
    num_scales: int = 18
    loss: str = "l2"
    s0: int = 10
    s1: int = 1280
    total_steps: int = 100_000
    sample_steps: int = 1
    ema_decay: float = 0.95
    ect_q: float = 2.0
    ect_stages: int = 8
    conditioning: Conditioning = Conditioning()
    guidance: float = 0.0                    # CD: the teacher's CFG scale (0: unguided)
    name: str = "consistency"

    @property
    def num_classes(self) -> int:
        return self.conditioning.num_classes

    @property
    def sample_options(self) -> frozenset:
        return frozenset({"steps", "labels"} if self.num_classes else {"steps"})

    @property
    def max_steps(self) -> int:
        """The trained discretisation: more sampling steps than this gain nothing."""
        return self.num_scales if self.mode == "cd" else self.s1

    # -- state -------------------------------------------------------------------------------
    def _init(self, key):
        x, t = jnp.zeros((1,) + self.shape), jnp.zeros((1,))
        y = (jnp.zeros((1,), jnp.int32),) if self.num_classes else ()
        params = self.model.init({"params": key}, x, t, *y)["params"]
        return ConsistencyState(jnp.zeros((), jnp.int32), params, params,
                                self.tx.init(nn.meta.unbox(params)),
                                params if self.mode == "cd" else {})

    def abstract_state(self, mesh: Mesh, rules):
        abstract = jax.eval_shape(self._init, jax.random.key(0))
        p_sh = param_shardings(abstract.params, mesh, rules)
        rep = replicated(mesh)
        shardings = ConsistencyState(rep, p_sh, p_sh, opt_shardings(self.tx, abstract.opt_state,
                                                                    p_sh, rep),
                                     p_sh if self.mode == "cd" else {})
        return with_shardings(abstract, shardings), shardings

    def init(self, key) -> ConsistencyState:
        """CT: a fresh network. CD: the student, its EMA and the frozen teacher all start as the
        teacher's parameters (read by ``teacher_loader`` on the host); ECT: the student and its
        EMA start as them (no teacher is kept)."""
        state = nn.meta.unbox(self._init(key))
        if self.mode == "ct":
            return state
        if self.teacher_loader is None:
            raise ValueError(f"consistency.mode={self.mode!r} needs a teacher: set "
                             "consistency.teacher=WORKDIR")
        shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                        state.params)
        # read on the host, also when init is traced by jit (the loop creates states sharded)
        loaded = lambda: jax.tree_util.tree_map(np.asarray, self.teacher_loader())
        teacher = jax.pure_callback(loaded, shapes)
        if self.mode == "ect":
            return state.replace(params=teacher, ema_params=teacher)
        return state.replace(params=teacher, ema_params=teacher, teacher=teacher)

    def sample_params(self, state: ConsistencyState):
        return state.ema_params

    # -- the functions -----------------------------------------------------------------------
    def denoiser(self, params) -> Callable:
        """``denoise(x, t[, y])``: labels ``y`` for a class-conditional model."""
        net = lambda x, t, *y: self.model.apply({"params": params}, x, t, *y)
        return make_denoiser(net, self.process, self.parameterization)

    def teacher_denoiser(self, params) -> Callable:
        """CD's teacher: the frozen network, guided where ``guidance`` is set."""
        return self.guide(self.denoiser(params))

    def guide(self, denoise: Callable) -> Callable:
        """``denoise(x, t, y)`` with classifier-free guidance at scale ``guidance`` (the null
        label's call and the labelled one combined); unchanged where it is not set."""
        if not (self.num_classes and self.guidance):
            return denoise

        def guided(x, t, y):
            null = denoise(x, t, jnp.full_like(y, self.num_classes))
            return null + self.guidance * (denoise(x, t, y) - null)
        return guided

    def function(self, params) -> Callable:
        """The consistency function ``f(x, t[, y]) -> x0`` of ``params``."""
        return C.consistency_function(self.denoiser(params), self.process)

    def train_step(self, state: ConsistencyState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        x0 = batch["image"]
        cond = self.conditioning(batch, jax.random.fold_in(key, 0x7FFFFFFF))
        args = (cond["y"],) if cond else ()  # labels, some dropped to the null class
        if self.mode == "cd":
            ts = make_grid(self.process, self.num_scales, "karras")
            teacher = self.teacher_denoiser(state.teacher)

            def loss_fn(p):
                return C.distillation_loss(self.function(p), self.function(state.ema_params),
                                           teacher, self.process, x0, ts, key, self.solver,
                                           self.loss, args)
        elif self.mode == "ect":
            def loss_fn(p):
                return C.ect_loss(self.function(p), self.process, x0, state.step, key,
                                  self.total_steps, self.loss, self.ect_q, self.ect_stages,
                                  args=args)
        else:
            def loss_fn(p):
                return C.training_loss(self.function(p), self.process, x0, state.step, key,
                                       self.total_steps, self.s0, self.s1, self.loss, args=args)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state, ema = apply_gradients(self.tx, state.params, state.opt_state, grads,
                                                 state.ema_params, self.ema_decay)
        aux_name = {"cd": "mean_pair", "ct": "num_scales", "ect": "gap_ratio"}[self.mode]
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), aux_name: aux}
        return ConsistencyState(state.step + 1, params, ema, opt_state, state.teacher), metrics

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, params, key, n: int, steps: int | None = None, cond: dict | None = None):
        """``n`` samples in ``steps`` network evaluations (default ``sample_steps``);
        class-conditional models get balanced labels unless ``cond={"y": ...}`` gives them (the
        null label ``num_classes``: unconditional)."""
        steps = steps or self.sample_steps
        x_T = self.process.prior_sample(key, (n,) + self.shape)
        args = ()
        if self.num_classes:
            y = (cond or {}).get("y")
            args = (jnp.arange(n) % self.num_classes if y is None else jnp.asarray(y),)
        return _sampler(self, steps)(params, x_T, jax.random.fold_in(key, 1), *args)

    def sample_controls(self, req: SampleRequest) -> dict:
        if req.steps and req.steps > self.max_steps:
            print(f"warning: --steps {req.steps} is more than the {self.max_steps} scales this "
                  f"consistency model was trained on; more steps than that do not help")
        return {"steps": req.steps} if req.steps else {}

    preview = class_rows_preview

    def nfe(self, req: SampleRequest) -> int:
        return req.steps or self.sample_steps

    eval_requests = StepsSampling.eval_requests


@functools.lru_cache(maxsize=16)
def _sampler(method: ConsistencyMethod, steps: int):
    ts = C.sample_times(method.process, steps)
    return jax.jit(lambda p, x_T, key, *y: C.multistep_sample(method.function(p), method.process,
                                                              x_T, ts, key, y))


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConsistencySpec:
    mode: str = "cd"             # cd (distillation from a teacher workdir) | ct (no teacher) |
                                 # ect (consistency tuning, initialised from the teacher)
    teacher: str = ""            # CD: a trained diffusion workdir (its model, process and
                                 # parameterization are used; the experiment need not repeat them)
    solver: str = "heun"         # CD: the project sampler taking the teacher's one ODE step
    num_scales: int = 18         # CD: Karras discretisation of [t_min, t_max]
    loss: str = ""               # l2 | pseudo_huber ("": l2 for CD, pseudo_huber for CT)
    s0: int = 10                 # CT curriculum: scales at the start ...
    s1: int = 1280               # ... and at the end
    sample_steps: int = 1        # evaluations of `sample` (CLI: sample --steps)
    ect_q: float = 2.0           # ECT: the gap s_t - s_r shrinks by q per stage ...
    ect_stages: int = 8          # ... over this many stages of train.steps
    guidance: float = 0.0        # CD of a class-conditional teacher: distil its classifier-free
                                 # guided ODE at this scale (0: unguided)


def _settings(ctx: BuildContext) -> tuple[ConsistencySpec, str]:
    c = ctx.typed(ConsistencySpec, "consistency", required=True)
    if c.mode not in CONSISTENCY_MODES:
        raise ConfigError(f"unknown consistency.mode={c.mode!r}; valid: "
                          f"{', '.join(CONSISTENCY_MODES)}")
    loss = c.loss or ("l2" if c.mode == "cd" else "pseudo_huber")
    if c.ect_q <= 1:
        raise ConfigError(f"consistency.ect_q={c.ect_q} must be > 1 (the gap's shrink factor "
                          "per stage)")
    if loss not in C.CONSISTENCY_LOSSES:
        raise ConfigError(f"unknown consistency.loss={loss!r}; valid: "
                          f"{', '.join(C.CONSISTENCY_LOSSES)}")
    if c.sample_steps < 1:
        raise ConfigError(f"consistency.sample_steps={c.sample_steps} must be >= 1")
    return c, loss


def build(ctx: BuildContext) -> ConsistencyMethod:
    c, loss = _settings(ctx)
    loader = None
    if c.mode in ("cd", "ect"):
        if not c.teacher:
            raise ConfigError(f"consistency.mode={c.mode!r} needs consistency.teacher=WORKDIR (a "
                              "trained diffusion model), or use consistency.mode='ct'")
        teacher = diffusion.teacher_run(ctx, c.teacher, "consistency.teacher", labels=True)
        t = teacher.experiment.method
        model, process, par, loader = t.model, t.process, t.parameterization, teacher.load_params
        cond = t.conditioning
        try:
            resolve_sampler(c.solver)
        except ValueError as e:
            raise ConfigError(f"consistency.solver: {e}") from None
    else:
        model, cond = diffusion.denoiser_network(ctx.section("model"), ctx.data)
        if cond.context_dim or cond.low_res_size:
            raise ConfigError("consistency training takes unconditional or class-conditional "
                              "models (no model.context_dim or low_res_size)")
        process, par = diffusion.process_and_parameterization(ctx)
    if c.guidance and c.mode != "cd":
        raise ConfigError(f"consistency.guidance={c.guidance} distils a teacher's guided ODE: "
                          "it is for consistency.mode='cd'")
    if c.guidance and not cond.num_classes:
        raise ConfigError(f"consistency.guidance={c.guidance} needs a class-conditional teacher; "
                          f"{c.teacher!r} is unconditional")
    if c.guidance < 0:
        raise ConfigError(f"consistency.guidance={c.guidance} must be >= 0 (0: unguided)")
    if c.guidance and not cond.drop_prob:
        raise ConfigError(f"consistency.guidance={c.guidance}: {c.teacher!r} was trained without "
                          "label dropout (model.cond_drop=0), so it has no unconditional output "
                          "to guide with; distil it unguided (consistency.guidance=0)")
    return ConsistencyMethod(model, process, par, ctx.tx, ctx.data.shape, c.mode, loader, c.solver,
                             c.num_scales, loss, c.s0, c.s1, ctx.train.steps, c.sample_steps,
                             ctx.train.ema_decay, c.ect_q, c.ect_stages, cond, c.guidance)
