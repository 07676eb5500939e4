"""Progressive distillation (Salimans & Ho 2022): a student learns to take in one deterministic
DDIM step what its teacher takes in two, halving the step count round after round
(``N -> N/2 -> ... -> N / 2^rounds``), all inside one run.

The time grid of an ``N``-step sampler is ``t(u)`` for ``u = 1, (N-1)/N, ..., 1/N`` with
``t(u) = t_min + u (t_max - t_min)`` in the teacher's process time. At ``z_t`` (``u = i/N``) the
teacher takes two DDIM steps, to ``u - 1/(2N)`` and ``u - 1/N``; the student's target is the
``x0`` for which one DDIM step from ``z_t`` lands where the teacher's two did:

    x~ = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t),

learned through the teacher's own parameterization (x0 / v) with the truncated-SNR weight
``max(alpha^2/sigma^2, 1)`` on the ``x0`` error. The state holds the student, its EMA and the
teacher; at each round's first step the teacher becomes the student (and the EMA restarts from
it: the previous round's average is another sampler's), so a run stopped mid-round resumes
exactly. Sampling takes ``N`` DDIM steps, the last one the student's ``x0``
(``N`` network evaluations).

    method = ProgressiveDistillation(model, process, par, tx, shape, teacher_loader=load,
                                     start_steps=64, rounds=6, round_steps=2000)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.methods import diffusion
from diffusion_jax.methods.base import MethodBase, SampleRequest, StepsSampling
from diffusion_jax.methods.state import StudentOfTeacher, TeacherState, apply_gradients
from diffusion_jax.parameterization import Parameterization, make_denoiser
from diffusion_jax.processes import Process, _bcast
from diffusion_jax.samplers.few_step import ddim, time_of
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("progressive", "process", "parameterization")


@dataclasses.dataclass(frozen=True, eq=False)
class ProgressiveDistillation(StudentOfTeacher, StepsSampling, MethodBase):
    """``start_steps``: the teacher's DDIM step count; ``rounds``: halvings (the final student
    takes ``start_steps / 2^rounds`` steps); ``round_steps``: training steps per round."""
    model: Any
    process: Process
    parameterization: Parameterization
    tx: optax.GradientTransformation
    shape: tuple[int, ...]
    teacher_loader: Callable | None = None
    start_steps: int = 64
    rounds: int = 6
    round_steps: int = 1000
    ema_decay: float = 0.999
    name: str = "progressive_distillation"

    @property
    def final_steps(self) -> int:
        return self.start_steps // 2 ** self.rounds

    @property
    def sample_steps(self) -> int:
        return self.final_steps

    sample_fields = ("ema_params", "teacher")

    def sample_params(self, state: TeacherState):
        """``{"student", "previous"}``: the student's EMA, and the last round's teacher (after
        the final round: the student of ``2 * final_steps`` steps, which ``sample`` uses for that
        step count)."""
        return {"student": state.ema_params, "previous": state.teacher}

    def denoiser(self, params) -> Callable:
        net = lambda x, t: self.model.apply({"params": params}, x, t)
        return make_denoiser(net, self.process, self.parameterization)

    # -- training ----------------------------------------------------------------------------
    def student_steps(self, step):
        """The step count the student learns at training step ``step`` (traced or not)."""
        rnd = jnp.minimum(step // self.round_steps, self.rounds - 1)
        return self.start_steps // 2 ** (rnd + 1)

    def loss(self, params, teacher, x, key, n):
        """The distillation loss of a batch at student step count ``n`` (traced)."""
        k_i, k_e = jax.random.split(key)
        b = x.shape[0]
        i = jax.random.randint(k_i, (b,), 1, n + 1)
        u = i / n
        t, t1, t2 = (time_of(self.process, v) for v in (u, u - 0.5 / n, u - 1.0 / n))
        co = lambda s: (_bcast(self.process.alpha(s), x), _bcast(self.process.sigma(s), x))
        (a, s), (a1, s1), (a2, s2) = co(t), co(t1), co(t2)
        eps = jax.random.normal(k_e, x.shape, x.dtype)
        z = a * x + s * eps
        teach = self.denoiser(teacher)
        x0 = teach(z, t)
        z1 = a1 * x0 + s1 * (z - a * x0) / s
        x1 = teach(z1, t1)
        z2 = a2 * x1 + s2 * (z1 - a1 * x1) / s1
        target = jax.lax.stop_gradient((z2 - (s2 / s) * z) / (a2 - (s2 / s) * a))
        pred = self.denoiser(params)(z, t)
        w = jnp.maximum(self.process.alpha(t) ** 2 / self.process.sigma(t) ** 2, 1.0)
        err = jnp.mean(jnp.reshape((pred - target) ** 2, (b, -1)), axis=1)
        return jnp.mean(w * err)

    def train_step(self, state: TeacherState, batch: dict, key: jax.Array):
        key = jax.random.fold_in(key, state.step)
        rnd = state.step // self.round_steps
        new_round = (state.step > 0) & (state.step % self.round_steps == 0) & (rnd < self.rounds)
        swap = lambda old, new: jax.tree_util.tree_map(
            lambda o, p: jnp.where(new_round, p, o), old, new)
        teacher, ema = swap(state.teacher, state.params), swap(state.ema_params, state.params)
        n = self.student_steps(state.step)
        loss, grads = jax.value_and_grad(self.loss)(state.params, teacher, batch["image"], key, n)
        params, opt_state, ema = apply_gradients(self.tx, state.params, state.opt_state, grads,
                                                 ema, self.ema_decay)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "student_steps": n.astype(jnp.float32)}
        return TeacherState(state.step + 1, params, ema, opt_state, teacher), metrics

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, params, key, n: int, steps: int | None = None):
        """``n`` samples in ``steps`` DDIM evaluations (default: the final student's); at
        ``2 * final_steps`` the previous round's student samples (``sample_params``)."""
        steps = steps or self.final_steps
        which = "previous" if steps == 2 * self.final_steps else "student"
        x_T = self.process.prior_sample(key, (n,) + self.shape)
        return _sampler(self, steps)(params[which], x_T)

    def sample_controls(self, req: SampleRequest) -> dict:
        if req.steps and req.steps > self.final_steps and req.steps != 2 * self.final_steps:
            print(f"note: --steps {req.steps}: this student was distilled for "
                  f"{self.final_steps} steps (its teacher took {self.start_steps}); more steps "
                  "than it was trained for are not its teacher's", file=sys.stderr)
        return StepsSampling.sample_controls(self, req)


@functools.lru_cache(maxsize=16)
def _sampler(method: ProgressiveDistillation, steps: int):
    return jax.jit(lambda p, x_T: ddim(method.denoiser(p), method.process, x_T, steps))


# -- settings and build ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProgressiveSpec:
    teacher: str = ""            # a trained diffusion workdir (or pretrained folder)
    start_steps: int = 64        # the teacher's DDIM steps; round k's student takes N / 2^k
    rounds: int = 6              # halvings: the final student takes start_steps / 2^rounds
    round_steps: int = 1000      # training steps per round (train.steps = rounds * round_steps)


def build(ctx: BuildContext) -> ProgressiveDistillation:
    c = ctx.typed(ProgressiveSpec, "progressive", required=True)
    if not c.teacher:
        raise ConfigError("progressive.teacher=WORKDIR is required: a trained diffusion model "
                          "to distill")
    if c.start_steps % 2 ** c.rounds:
        raise ConfigError(f"progressive.rounds={c.rounds} halvings do not divide "
                          f"progressive.start_steps={c.start_steps}: use a start_steps that is a "
                          f"multiple of {2 ** c.rounds}, or fewer rounds")
    if ctx.train.steps != c.rounds * c.round_steps:
        raise ConfigError(f"train.steps={ctx.train.steps} but the schedule is {c.rounds} rounds "
                          f"of {c.round_steps} steps: set train.steps={c.rounds * c.round_steps}")
    teacher = diffusion.teacher_run(ctx, c.teacher, "progressive.teacher")
    t = teacher.experiment.method
    return ProgressiveDistillation(t.model, t.process, t.parameterization, ctx.tx, ctx.data.shape,
                                   teacher.load_params, c.start_steps, c.rounds, c.round_steps,
                                   ctx.train.ema_decay)
