"""The train state of single-network methods (params, EMA, optimizer state, step) and its
shardings, derived from the model's logical axis names without computing anything."""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from diffusion_jax.methods.ema import ema_update
from diffusion_jax.parallel import rules_for_mesh


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, example: tuple):
    def init(key):
        boxed = model.init({"params": key}, *example)["params"]
        params = nn.meta.unbox(boxed)
        return TrainState(jnp.zeros((), jnp.int32), boxed, boxed, tx.init(params)), boxed
    return init


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, example: tuple,
                    mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)`` from shapes alone (nothing is computed): the layout comes
    from the model's logical axis names; the abstract state is what a checkpoint restores into."""
    abstract, boxed = jax.eval_shape(_init_fn(model, tx, example), jax.random.key(0))
    param_sh = param_shardings(boxed, mesh, rules)
    rep = replicated(mesh)
    shardings = TrainState(rep, param_sh, param_sh, opt_shardings(tx, abstract.opt_state, param_sh, rep))
    return with_shardings(abstract, shardings), shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.sharding.PartitionSpec())


def param_shardings(boxed, mesh: Mesh, rules):
    """Parameter shardings from the logical axis names of a boxed parameter tree (dimensions a
    mesh axis does not divide are replicated)."""
    spec = nn.get_partition_spec(boxed)
    rules = rules_for_mesh(rules, mesh)
    with nn.logical_axis_rules(rules):
        sh = nn.logical_to_mesh_sharding(spec, mesh, rules)
    return _replicate_indivisible(nn.meta.unbox(boxed), sh, mesh)


def opt_shardings(tx: optax.GradientTransformation, opt_state, param_sh, rep):
    """Optimizer moments take their parameter's layout; counts and other scalars are replicated."""
    return optax.tree_map_params(tx, lambda _, sh: sh, nn.meta.unbox(opt_state), param_sh,
                                 transform_non_params=lambda _: rep)


def with_shardings(abstract, shardings):
    """The abstract (unboxed) tree with each leaf's sharding attached: a restore target."""
    return jax.tree_util.tree_map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        nn.meta.unbox(abstract), shardings)


def init_state(model: nn.Module, tx: optax.GradientTransformation, example: tuple, key) -> TrainState:
    """A fresh state (unboxed). Pure: jit it with ``out_shardings`` from ``state_shardings`` so
    that no full copy is ever materialised on one device."""
    st, _ = _init_fn(model, tx, example)(key)
    return TrainState(st.step, nn.meta.unbox(st.params), nn.meta.unbox(st.ema_params), st.opt_state)


def _replicate_indivisible(params, shardings, mesh: Mesh):
    """Replicate the dimensions a mesh axis does not divide (e.g. a 1-channel output conv under
    fsdp=8), and say which parameters that affects."""
    changed = []

    def fix(path, leaf, sh):
        spec = list(sh.spec) + [None] * (leaf.ndim - len(sh.spec))
        for i, ax in enumerate(spec):
            axes = ax if isinstance(ax, tuple) else (ax,) if ax else ()
            size = 1
            for a in axes:
                size *= mesh.shape[a]
            if size > 1 and leaf.shape[i] % size:
                changed.append(f"{jax.tree_util.keystr(path)} dim {i} ({leaf.shape[i]}) by {ax}")
                spec[i] = None
        return NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    out = jax.tree_util.tree_map_with_path(fix, params, shardings)
    if changed:
        logging.warning("replicating %d parameter dimensions not divisible by their mesh axes: %s",
                        len(changed), "; ".join(changed[:8]) + (" ..." if len(changed) > 8 else ""))
    return out


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads, ema, decay):
    """One optimizer update and the EMA after it: ``(params, opt_state, ema)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(ema, params, decay)


def ema_decay_at(step, decay: float, start: int = 0):
    """The EMA decay at ``step``: 0 (copy the parameters) before ``start``."""
    return jnp.where(step < start, 0.0, decay)


@flax.struct.dataclass
class TeacherState:
    """A student trained against a teacher's parameters (distillation, reflow)."""
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    teacher: Any


class StudentOfTeacher:
    """``abstract_state`` and ``init`` of a student that starts as its teacher, the teacher's
    parameters kept in the state (frozen, or swapped by the step): the subclass has ``model``,
    ``tx``, ``shape`` and ``teacher_loader() -> params`` (host arrays)."""

    def _fresh(self, key) -> TeacherState:
        x, t = jnp.zeros((1,) + tuple(self.shape)), jnp.zeros((1,))
        params = self.model.init({"params": key}, x, t)["params"]
        return TeacherState(jnp.zeros((), jnp.int32), params, params,
                            self.tx.init(nn.meta.unbox(params)), params)

    def abstract_state(self, mesh: Mesh, rules):
        abstract = jax.eval_shape(self._fresh, jax.random.key(0))
        p_sh = param_shardings(abstract.params, mesh, rules)
        rep = replicated(mesh)
        sh = TeacherState(rep, p_sh, p_sh, opt_shardings(self.tx, abstract.opt_state, p_sh, rep),
                          p_sh)
        return with_shardings(abstract, sh), sh

    def init(self, key) -> TeacherState:
        """Student, EMA and teacher all start as the teacher's parameters, read on the host
        (also when the loop traces ``init`` under jit)."""
        state = nn.meta.unbox(self._fresh(key))
        teacher = load_on_host(self.teacher_loader, state.params)
        return state.replace(params=teacher, ema_params=teacher, teacher=teacher)


def load_on_host(loader, like):
    """``loader()``'s parameters (float32 host arrays) as a traced value shaped as ``like``."""
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    return jax.pure_callback(
        lambda: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), loader()), shapes)


class SingleNetwork:
    """``abstract_state``, ``init`` and ``sample_params`` of the method contract for methods with
    one network, one optimizer and an EMA (the subclass has ``model``, ``tx`` and
    ``example_inputs()``)."""

    def abstract_state(self, mesh: Mesh, rules):
        return state_shardings(self.model, self.tx, self.example_inputs(), mesh, rules)

    def init(self, key) -> TrainState:
        return init_state(self.model, self.tx, self.example_inputs(), key)

    def sample_params(self, state: TrainState):
        return state.ema_params
