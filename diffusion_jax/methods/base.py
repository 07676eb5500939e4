"""The method contract: the one place a generative family differs from another.

A method is a frozen object built once from the typed experiment. The training loop, the
checkpoints, the workdir reader and the CLI only ever call these members:

    abstract_state(mesh, rules) -> (abstract_state, shardings)   shapes only, nothing computed
    init(key) -> state                    jitted by the loop with out_shardings (created sharded)
    train_step(state, batch, key) -> (state, metrics)   pure; jitted with donation by the loop;
                                          may update several networks with several optimizers
    sample_params(state) -> params        what sampling uses (e.g. the EMA)
    sample(params, key, n) -> images      n samples with the method's default controls
    preview(params, key, n, test_images) -> (images, nrow)   the grid written while training
    evaluate(params, test_source) -> dict  figures reported when training ends ({} if none);
                                          ``test_source()`` returns the test split
    generates: bool                       False for methods that make no samples (classifier)

``test_images(n)`` returns the first ``n`` test images in [-1, 1] (super-resolution previews);
metrics must hold a ``"loss"`` scalar (the loop's NaN check reads it).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import jax


@runtime_checkable
class Method(Protocol):
    name: str

    def abstract_state(self, mesh, rules) -> tuple[Any, Any]: ...

    def init(self, key: jax.Array) -> Any: ...

    def train_step(self, state, batch: dict, key: jax.Array) -> tuple[Any, dict]: ...

    def sample_params(self, state) -> Any: ...

    def sample(self, params, key: jax.Array, n: int) -> jax.Array: ...

    def preview(self, params, key: jax.Array, n: int,
                test_images: Callable[[int], Any]) -> tuple[Any, int | None]: ...

    def evaluate(self, params, test_source) -> dict: ...
