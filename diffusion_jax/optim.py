"""Optimizers from typed settings (the experiment's ``optimizer`` section)."""

from __future__ import annotations

import optax


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, schedule: str = "constant",
                   weight_decay: float = 0.0, b2: float = 0.999, grad_clip: float = 1.0,
                   grad_accum: int = 1, b1: float = 0.9) -> optax.GradientTransformation:
    """AdamW with linear warm-up, then constant or cosine decay; global-norm clipping;
    ``grad_accum`` micro-batches per update through ``optax.MultiSteps``."""
    if schedule == "constant":
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
                                      optax.constant_schedule(lr)], [max(warmup_steps, 1)])
    elif schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1),
                                                   max(total_steps, warmup_steps + 1))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: constant, cosine")
    tx = optax.chain(optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
                     optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay))
    return optax.MultiSteps(tx, grad_accum) if grad_accum > 1 else tx
