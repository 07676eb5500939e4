"""Knowledge distillation into a smaller network (Hinton et al. 2015, as diffusion students are
trained, e.g. BK-SDM): a student U-Net of the experiment's ``model`` section (e.g. half or a
quarter of the teacher's channels) learns to output what the teacher's network outputs on the
same noisy inputs, ``|| f_student(x_t, t) - f_teacher(x_t, t) ||^2``, with ``x_t`` drawn as the
teacher was trained (its process, the experiment's time sampler, training images). The target is
the teacher's whole denoiser, not the data: a student can match it more closely than the
data's noisy targets let it learn.

The student is a ``Diffusion`` model on the teacher's process and parameterization, so it samples,
evaluates, quantises and exports as any diffusion run; its state also holds the frozen teacher.

    python -m diffusion_jax train --config experiments/fashion_mnist_student.py \\
        --workdir runs/student_half --config.student.teacher=runs/fm --config.model.channels=16
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.losses import LossConfig, sample_t
from diffusion_jax.methods import diffusion
from diffusion_jax.methods.diffusion import Diffusion
from diffusion_jax.methods.state import (TeacherState, apply_gradients, ema_decay_at, load_on_host,
                                         opt_shardings, param_shardings, replicated,
                                         with_shardings)
from diffusion_jax.settings import BuildContext, ConfigError

SECTIONS = ("student", "loss")


@dataclasses.dataclass(frozen=True, eq=False)
class Student(Diffusion):
    """``teacher_model``/``teacher_loader``: the teacher's network and its parameters (host
    arrays); everything else is a ``Diffusion`` on the teacher's process."""
    teacher_model: Any = None
    teacher_loader: Callable | None = None
    name: str = "student"

    def _fresh(self, key) -> TeacherState:
        ex = self.example_inputs()
        params = self.model.init({"params": key}, *ex)["params"]
        teacher = self.teacher_model.init({"params": key}, *ex)["params"]
        return TeacherState(jnp.zeros((), jnp.int32), params, params,
                            self.tx.init(nn.meta.unbox(params)), teacher)

    def abstract_state(self, mesh, rules):
        abstract = jax.eval_shape(self._fresh, jax.random.key(0))
        p_sh = param_shardings(abstract.params, mesh, rules)
        rep = replicated(mesh)
        sh = TeacherState(rep, p_sh, p_sh, opt_shardings(self.tx, abstract.opt_state, p_sh, rep),
                          param_shardings(abstract.teacher, mesh, rules))
        return with_shardings(abstract, sh), sh

    def init(self, key) -> TeacherState:
        """A fresh student (and its EMA); the teacher's parameters read on the host."""
        state = nn.meta.unbox(self._fresh(key))
        return state.replace(teacher=load_on_host(self.teacher_loader, state.teacher))

    def train_step(self, state: TeacherState, batch: dict, key: jax.Array):
        """The student's output against the teacher's at the same ``(x_t, t)``: mean squared
        difference over every output value. Pure; keys from ``fold_in(key, step)``."""
        key = jax.random.fold_in(key, state.step)
        k_t, k_eps = jax.random.split(key)
        x0 = batch["image"]
        t = sample_t(k_t, x0.shape[0], self.process, self.loss.t_sampler, self.loss.p_mean,
                     self.loss.p_std)
        x_t = self.process.marginal(x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))
        col = (-1,) + (1,) * (x0.ndim - 1)
        net_x, net_t = self.parameterization.inputs(
            x_t, t, self.process.alpha(t).reshape(col), self.process.sigma(t).reshape(col))
        net_t = jnp.reshape(net_t, t.shape)
        target = jax.lax.stop_gradient(
            self.teacher_model.apply({"params": state.teacher}, net_x, net_t))

        def loss_fn(params):
            out = self.model.apply({"params": params}, net_x, net_t, train=True,
                                   rngs={"dropout": jax.random.fold_in(key, 2)})
            return jnp.mean(jnp.square(out - target))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        params, opt_state, ema = apply_gradients(
            self.tx, state.params, state.opt_state, grads, state.ema_params,
            ema_decay_at(state.step, self.ema_decay, self.ema_start))
        return (TeacherState(state.step + 1, params, ema, opt_state, state.teacher),
                {"loss": loss, "grad_norm": optax.tree.norm(grads)})


@dataclasses.dataclass(frozen=True)
class StudentSpec:
    teacher: str = ""    # a trained unconditional pixel diffusion workdir


def build(ctx: BuildContext) -> Student:
    c = ctx.typed(StudentSpec, "student", required=True)
    if not c.teacher:
        raise ConfigError("student.teacher=WORKDIR is required: a trained diffusion model "
                          "(experiments/fashion_mnist_ddpm.py)")
    run = diffusion.teacher_run(ctx, c.teacher, "student.teacher")
    t = run.experiment.method
    model, cond = diffusion.denoiser_network(ctx.section("model"), ctx.data)
    if cond.active:
        raise ConfigError("model.conditional: the student of an unconditional teacher is "
                          "unconditional; remove the conditioning from the model section")
    s, tr = ctx.sample, ctx.train
    return Student(model, t.process, t.parameterization, ctx.typed(LossConfig, "loss"), ctx.tx,
                   ctx.data.shape, cond, tr.ema_decay, tr.ema_start, s.sampler, s.num_steps,
                   s.grid, s.guidance, teacher_model=t.model, teacher_loader=run.load_params)
