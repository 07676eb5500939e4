from diffusion_jax.parallel.mesh import (DEFAULT_RULES, batch_sharding, batch_size_per_shard, make_mesh,
                                         replicated, rules_for_mesh)

__all__ = ["DEFAULT_RULES", "batch_sharding", "batch_size_per_shard", "make_mesh", "replicated", "rules_for_mesh"]
