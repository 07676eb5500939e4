"""Compressing a trained network for sampling: quantisation (``quantize``: int8 / int4 weights,
int8 activations), magnitude pruning (``prune``) and low-rank factorisation (``lowrank``). Each is
a transform of the parameter tree on the host; ``Compression.model`` wraps the network so that it
takes the compressed tree (materialised inside the compiled sampler)."""

from __future__ import annotations

import dataclasses

from diffusion_jax.compress.lowrank import check_ratio, lowrank_params
from diffusion_jax.compress.packed import (CompressedModel, Packed, map_kernels, materialize,
                                           param_bytes, param_count)
from diffusion_jax.compress.prune import check_sparsity, fake_prune_kernel, prune_params
from diffusion_jax.compress.quantize import (MODES, QTensor, check_mode, fake_quantize_kernel,
                                             quantize_inputs, quantize_params)

__all__ = ["MODES", "Compression", "CompressedModel", "Packed", "QTensor", "materialize",
           "param_bytes", "param_count", "prune_params", "lowrank_params", "quantize_params"]


@dataclasses.dataclass(frozen=True)
class Compression:
    """What ``sample``/``eval`` apply to the loaded parameters, in this order: ``prune`` (a
    sparsity), ``low_rank`` (the kept fraction of each dense/1x1 kernel's rank), ``quantize``
    (a mode of ``MODES``). Every value is checked at construction."""
    quantize: str | None = None
    prune: float | None = None
    low_rank: float | None = None

    def __post_init__(self):
        if self.quantize is not None:
            check_mode(self.quantize)
        if self.prune is not None:
            check_sparsity(self.prune)
        if self.low_rank is not None:
            check_ratio(self.low_rank)

    @property
    def active(self) -> bool:
        return (self.quantize, self.prune, self.low_rank) != (None, None, None)

    def params(self, params):
        if self.prune is not None:
            params = prune_params(params, self.prune)
        if self.low_rank is not None:
            params = lowrank_params(params, self.low_rank)
        if self.quantize is not None:
            params = quantize_params(params, self.quantize)
        return params

    def fake(self, params):
        """Compression-aware training (jittable): the kernels as ``params`` would compress them
        (pruned, then rounded), gradients passed straight through. Low rank is not trained
        this way (its factors are not the trained parameters)."""
        if self.low_rank is not None:
            raise ValueError("compress.low_rank is applied after training (sample --low-rank); "
                             "compression-aware training takes quantize and prune")
        def one(name, w):
            if self.prune is not None:
                w = fake_prune_kernel(w, self.prune)
            if self.quantize is not None:
                w = fake_quantize_kernel(w, MODES[self.quantize].bits)
            return w
        return map_kernels(one, params)

    def model(self, model) -> CompressedModel:
        acts = self.quantize is not None and MODES[self.quantize].activations
        return CompressedModel(model, quantize_inputs if acts else None)
