"""The CLIP text tower as Stable Diffusion uses it (transformers' ``CLIPTextModel``): token and
position embeddings, pre-LayerNorm transformer layers with a causal mask, a final LayerNorm.
SD 1.x ships OpenAI's ViT-L/14 text tower (``quick_gelu``, 12 layers); SD 2.x OpenCLIP-H's in
the same form (``gelu``, its penultimate layer kept: the folder's config has 23 layers).

Submodules are named as the torch module tree is (``encoder/layers_3/self_attn/q_proj``)
so a ``model.safetensors`` maps onto the parameters by name (``pretrained/convert.py``; the
``text_model.`` prefix of transformers' keys is dropped).

    enc = CLIPTextEncoder(CLIPTextConfig(hidden_size=768, num_hidden_layers=12, ...))
    hidden = enc.apply({"params": p}, ids)       # ids [B, 77] int32 -> [B, 77, hidden_size]
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import attention, dense

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: nn.gelu(x, approximate=False),
               "gelu_new": lambda x: nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of a transformers ``CLIPTextConfig`` (``text_encoder/config.json``)."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def problems(self) -> list[str]:
        out = []
        if self.hidden_act not in ACTIVATIONS:
            out.append(f"hidden_act={self.hidden_act!r} (supported: {', '.join(ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads:
            out.append(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")
        return out


def layer_norm(eps, name):
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
    heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        b, n, d = h.shape
        q, k, v = (dense(d, name=f"{p}_proj", dtype=self.dtype)(h).reshape(b, n, self.heads, -1)
                   for p in ("q", "k", "v"))
        causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
        return dense(d, name="out_proj", dtype=self.dtype)(
            attention(q, k, v, mask=causal).reshape(b, n, d))


class EncoderLayer(nn.Module):
    cfg: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        cfg = self.cfg
        h = h + SelfAttention(cfg.num_attention_heads, self.dtype, name="self_attn")(
            layer_norm(cfg.layer_norm_eps, "layer_norm1")(h))
        return h + MLP(cfg, self.dtype, name="mlp")(layer_norm(cfg.layer_norm_eps, "layer_norm2")(h))


class MLP(nn.Module):
    cfg: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, m):
        m = dense(self.cfg.intermediate_size, name="fc1", dtype=self.dtype)(m)
        return dense(self.cfg.hidden_size, name="fc2", dtype=self.dtype)(
            ACTIVATIONS[self.cfg.hidden_act](m))


class Embeddings(nn.Module):
    cfg: CLIPTextConfig

    @nn.compact
    def __call__(self, ids):
        cfg = self.cfg
        tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")(ids)
        pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding")(
            jnp.arange(ids.shape[1]))
        return tok + pos[None]


class Encoder(nn.Module):
    cfg: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        for i in range(self.cfg.num_hidden_layers):
            h = EncoderLayer(self.cfg, self.dtype, name=f"layers_{i}")(h)
        return h


class CLIPTextEncoder(nn.Module):
    """``apply(params, ids [B, L]) -> [B, L, hidden_size]``: the last hidden state after the final
    LayerNorm (``CLIPTextModel(ids)[0]``, what diffusers' SD pipelines feed the U-Net)."""
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids):
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens; this text encoder takes at most "
                             f"{self.config.max_position_embeddings}")
        cfg = self.config
        h = Encoder(cfg, self.dtype, name="encoder")(Embeddings(cfg, name="embeddings")(ids))
        return layer_norm(cfg.layer_norm_eps, "final_layer_norm")(h).astype(jnp.float32)
