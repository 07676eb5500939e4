"""Reflow (Liu et al. 2022, "Flow straight and fast"): a rectified flow trained on the couplings
of another one. The teacher (a flow-matching run: the ``flow`` process, velocity prediction)
maps noise ``z`` to ``x0 = ODE(z)``; the student learns flow matching on those *pairs*,
``x_t = (1 - t) x0 + t z``, whose straight lines no longer cross, so its ODE paths straighten
and one Euler step lands near where many did (the 2-rectified flow).

Couplings are made on the fly inside the jitted step (the teacher's deterministic sampler from
``fold_in(key, step)`` noise), so a resumed run draws exactly the pairs the uninterrupted run
would have; the state holds the student, its EMA and the frozen teacher (the student starts as
the teacher). Sampling: ``n`` Euler steps (``samplers.few_step``), NFE ``n``.

    method = Reflow(model, process, par, loss, tx, shape, teacher_loader=load,
                    teacher_sampler="dpmpp_2m", teacher_steps=9)

(Heun on its default logsnr grid is a poor coupling sampler on the flow process at few steps:
on an exact mixture its 4-step endpoint is 11.3 RMSE from the exact flow map, DPM-Solver++(2M)'s
8-step 0.49.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import optax

from diffusion_jax.losses import LossConfig, denoising_loss
from diffusion_jax.methods import diffusion
from diffusion_jax.methods.base import MethodBase, StepsSampling
from diffusion_jax.methods.diffusion_sampling import model_denoiser
from diffusion_jax.methods.state import StudentOfTeacher, TeacherState, apply_gradients
from diffusion_jax.parameterization import Parameterization, VelocityPrediction
from diffusion_jax.processes import Flow, Process
from diffusion_jax.samplers import resolve_sampler, sample as run_sampler
from diffusion_jax.samplers.few_step import ddim
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("reflow", "loss")


@dataclasses.dataclass(frozen=True, eq=False)
class Reflow(StudentOfTeacher, StepsSampling, MethodBase):
    """``teacher_sampler``/``teacher_steps``: how couplings are made (``total_nfe`` of them:
    network evaluations per pair); ``sample_steps``: the default Euler steps of ``sample``."""
    model: Any
    process: Process
    parameterization: Parameterization
    loss: LossConfig
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    teacher_loader: Callable | None = None
    teacher_sampler: str = "dpmpp_2m"
    teacher_steps: int = 9
    ema_decay: float = 0.999
    sample_steps: int = 1
    name: str = "reflow"

    def denoiser(self, params) -> Callable:
        return model_denoiser(self.model, self.process, self.parameterization, params)

    # -- training ----------------------------------------------------------------------------
    def couple(self, teacher, z, key):
        """The teacher's data end ``x0`` for standard-normal noise ``z`` (its deterministic
        sampler from ``x_T = sigma(t_max) z``)."""
        x_T = self.process.sigma(self.process.t_max) * z
        return run_sampler(self.denoiser(teacher), self.process, x_T,
                           sampler=self.teacher_sampler, num_steps=self.teacher_steps, key=key)

    def train_step(self, state: TeacherState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        k_z, k_s, k_loss = jax.random.split(key, 3)
        z = jax.random.normal(k_z, batch["image"].shape, batch["image"].dtype)
        x0 = jax.lax.stop_gradient(self.couple(state.teacher, z, k_s))
        apply = lambda p, x, t, c, train, rngs: self.model.apply(
            {"params": p}, x, t, train=train, rngs=rngs)

        def loss_fn(params):
            return denoising_loss(apply, params, x0, k_loss, self.process, self.parameterization,
                                  self.loss, eps=z)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state, ema = apply_gradients(self.tx, state.params, state.opt_state, grads,
                                                 state.ema_params, self.ema_decay)
        return (TeacherState(state.step + 1, params, ema, opt_state, state.teacher),
                {"loss": loss, "grad_norm": optax.tree.norm(grads)})

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, params, key, n: int, steps: int | None = None):
        """``n`` samples in ``steps`` Euler steps (default ``sample_steps``): NFE ``steps``."""
        x_T = self.process.prior_sample(key, (n,) + self.shape)
        return _sampler(self, steps or self.sample_steps)(params, x_T)


@functools.lru_cache(maxsize=16)
def _sampler(method: Reflow, steps: int):
    return jax.jit(lambda p, x_T: ddim(method.denoiser(p), method.process, x_T, steps))


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReflowSpec:
    teacher: str = ""            # a trained flow-matching workdir (flow process, velocity)
    teacher_sampler: str = "dpmpp_2m"  # the deterministic sampler that makes the couplings
    teacher_steps: int = 9
    sample_steps: int = 1        # Euler steps of `sample` (CLI: sample --steps)


def build(ctx: BuildContext) -> Reflow:
    c = ctx.typed(ReflowSpec, "reflow", required=True)
    if not c.teacher:
        raise ConfigError("reflow.teacher=WORKDIR is required: a trained flow-matching model "
                          "(experiments/fashion_mnist_flow_matching.py)")
    try:
        sampler = resolve_sampler(c.teacher_sampler)
    except ValueError as e:
        raise ConfigError(f"reflow.teacher_sampler: {e}") from None
    if sampler.stochastic or sampler.adaptive:
        raise ConfigError(f"reflow.teacher_sampler={c.teacher_sampler!r}: couplings need a "
                          "deterministic fixed-grid ODE sampler (heun, euler, unipc, dpmpp_2m)")
    teacher = diffusion.teacher_run(ctx, c.teacher, "reflow.teacher")
    t = teacher.experiment.method
    if not isinstance(t.process, Flow) or not isinstance(t.parameterization, VelocityPrediction):
        raise ConfigError(f"reflow.teacher={c.teacher!r} is a {t.process.name} / "
                          f"{type(t.parameterization).__name__} model; reflow straightens a "
                          "rectified flow (process.name='flow', parameterization.name='velocity')")
    loss = ctx.typed(LossConfig, "loss")
    return Reflow(t.model, t.process, t.parameterization, loss, ctx.tx, ctx.data.shape,
                  teacher.load_params, c.teacher_sampler, c.teacher_steps, ctx.train.ema_decay,
                  c.sample_steps)
