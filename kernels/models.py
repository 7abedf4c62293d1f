"""Decoder-only transformer configurations, seeded synthetic weights, KV cache.

Two families:
  "llama": pre-norm RMSNorm, rotary position embeddings (RoPE) on Q and K,
           grouped-query attention, SwiGLU MLP, no biases.
  "gpt2":  pre-norm LayerNorm (with bias), learned absolute position
           embeddings added to the input, multi-head attention, GELU MLP
           (tanh approximation), biases on every linear layer.

We work on hidden states: no token embedding, no final norm, no LM head.
Linear layers compute y = x @ W (+ b) with W stored (in_features,
out_features). Q, K, V weights put head h in columns [h*head_dim,
(h+1)*head_dim).

Preset dimensions come from the models' published configs (Hugging Face
config.json of gpt2, Meta-Llama-3-8B, Llama-2-13b-hf, Meta-Llama-3-70B).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from wse.errors import ConfigError

FAMILIES = ("llama", "gpt2")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a decoder-only model."""

    name: str
    family: str
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    n_layers: int
    vocab_size: int = 0
    """Irrelevant here (we work on hidden states); kept for parameter counts."""
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"ModelConfig.family = {self.family!r}: expected one of {FAMILIES}")
        for name in ("d_model", "n_heads", "n_kv_heads", "d_ff", "n_layers", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} = {value!r}: must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{self.name}: d_model {self.d_model} is not a multiple of "
                              f"n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"{self.name}: n_heads {self.n_heads} is not a multiple of "
                              f"n_kv_heads {self.n_kv_heads}")
        if self.family == "gpt2" and self.n_kv_heads != self.n_heads:
            raise ConfigError(f"{self.name}: GPT-2 style models use multi-head attention "
                              f"(n_kv_heads must equal n_heads = {self.n_heads})")
        if self.family == "llama" and self.head_dim % 2:
            raise ConfigError(f"{self.name}: RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def gated(self) -> bool:
        """SwiGLU (two up projections) rather than a plain GELU MLP."""
        return self.family == "llama"

    @property
    def has_bias(self) -> bool:
        return self.family == "gpt2"

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def layer_params(self) -> int:
        """Parameters of one layer (weights, biases, norm scales)."""
        d, hd = self.d_model, self.head_dim
        attn = d * (self.n_heads * hd) * 2 + d * (self.n_kv_heads * hd) * 2
        mlp = d * self.d_ff * (3 if self.gated else 2)
        norms = 2 * d * (2 if self.family == "gpt2" else 1)
        bias = 0
        if self.has_bias:
            bias = self.n_heads * hd + 2 * self.n_kv_heads * hd + d + self.d_ff + d
        return attn + mlp + norms + bias

    def kv_cache_elements(self, seq_len: int, batch: int = 1, n_layers: int | None = None) -> int:
        """Elements of a K and V cache holding `seq_len` positions."""
        layers = self.n_layers if n_layers is None else n_layers
        return 2 * layers * batch * seq_len * self.n_kv_heads * self.head_dim


_PRESETS = {
    "tiny": ModelConfig("tiny", "llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
                        n_layers=2, vocab_size=256, max_seq_len=256),
    "tiny-gpt2": ModelConfig("tiny-gpt2", "gpt2", d_model=64, n_heads=4, n_kv_heads=4,
                             d_ff=256, n_layers=2, vocab_size=256, max_seq_len=256),
    "gpt2-small": ModelConfig("gpt2-small", "gpt2", d_model=768, n_heads=12, n_kv_heads=12,
                              d_ff=3072, n_layers=12, vocab_size=50257, max_seq_len=1024),
    "llama3-8b": ModelConfig("llama3-8b", "llama", d_model=4096, n_heads=32, n_kv_heads=8,
                             d_ff=14336, n_layers=32, vocab_size=128256, max_seq_len=8192,
                             rope_theta=500000.0),
    "llama2-13b": ModelConfig("llama2-13b", "llama", d_model=5120, n_heads=40, n_kv_heads=40,
                              d_ff=13824, n_layers=40, vocab_size=32000, max_seq_len=4096),
    "llama3-70b": ModelConfig("llama3-70b", "llama", d_model=8192, n_heads=64, n_kv_heads=8,
                              d_ff=28672, n_layers=80, vocab_size=128256, max_seq_len=8192,
                              rope_theta=500000.0),
}

PRESETS = tuple(_PRESETS)


def preset(name: str) -> ModelConfig:
    """A named configuration: "tiny", "tiny-gpt2", "gpt2-small", "llama3-8b",
    "llama2-13b", "llama3-70b"."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model preset {name!r}: expected one of "
                          f"{', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer. Shapes (d = d_model, H = n_heads, K = n_kv_heads,
    hd = head_dim, f = d_ff); `None` where the family has no such tensor."""

    attn_norm: np.ndarray            # (d,)
    attn_norm_bias: np.ndarray | None  # (d,) LayerNorm only
    wq: np.ndarray                   # (d, H*hd)
    wk: np.ndarray                   # (d, K*hd)
    wv: np.ndarray                   # (d, K*hd)
    wo: np.ndarray                   # (H*hd, d)
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bo: np.ndarray | None
    mlp_norm: np.ndarray             # (d,)
    mlp_norm_bias: np.ndarray | None
    w_up: np.ndarray                 # (d, f)
    w_gate: np.ndarray | None        # (d, f) SwiGLU only: act = silu(x@w_gate) * (x@w_up)
    w_down: np.ndarray               # (f, d)
    b_up: np.ndarray | None
    b_down: np.ndarray | None


@dataclass(frozen=True)
class ModelWeights:
    """All layers, plus GPT-2's learned position embeddings (max_seq_len, d)."""

    layers: tuple[LayerWeights, ...]
    position_embedding: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def random_weights(model: ModelConfig, seed: int = 0, n_layers: int | None = None) -> ModelWeights:
    """Seeded synthetic float32 weights with realistic scales.

    Linear weights ~ N(0, 1/fan_in) so activations keep their scale through
    each projection; norm scales ~ 1 + N(0, 0.1^2) and biases ~ N(0, 0.02^2)
    (small, but not exactly 1 and 0, so that a norm or bias applied to the
    wrong shard shows up in tests); GPT-2 position embeddings ~ N(0, 0.02^2)
    as in its initialisation. `n_layers` builds only the first layers
    (default: all of them).
    """
    if not isinstance(model, ModelConfig):
        raise ConfigError(f"expected a kernels.models.ModelConfig, got {type(model).__name__}")
    layers = model.n_layers if n_layers is None else n_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"n_layers = {n_layers!r}: must be a positive integer")
    rng = np.random.default_rng(seed)
    d, f, hd = model.d_model, model.d_ff, model.head_dim
    q_width, kv_width = model.n_heads * hd, model.n_kv_heads * hd

    def linear(fan_in: int, fan_out: int) -> np.ndarray:
        # drawn in float32: a LLaMA-3-8B layer's 218 M values take a third of the time
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(fan_in))
        return w

    def scale(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n: int) -> np.ndarray | None:
        return (0.02 * rng.standard_normal(n)).astype(np.float32) if model.has_bias else None

    built = []
    for _ in range(layers):
        layernorm = model.family == "gpt2"
        built.append(LayerWeights(
            attn_norm=scale(d), attn_norm_bias=bias(d) if layernorm else None,
            wq=linear(d, q_width), wk=linear(d, kv_width), wv=linear(d, kv_width),
            wo=linear(q_width, d),
            bq=bias(q_width), bk=bias(kv_width), bv=bias(kv_width), bo=bias(d),
            mlp_norm=scale(d), mlp_norm_bias=bias(d) if layernorm else None,
            w_up=linear(d, f), w_gate=linear(d, f) if model.gated else None,
            w_down=linear(f, d), b_up=bias(f), b_down=bias(d),
        ))
    positions = None
    if model.family == "gpt2":
        positions = (0.02 * rng.standard_normal((model.max_seq_len, d))).astype(np.float32)
    return ModelWeights(tuple(built), positions)


@dataclass(frozen=True)
class KVCache:
    """The decode state after some positions have been processed.

    keys[l], values[l]: layer l's cache, shape (n_kv_heads, length, head_dim),
        keys stored after RoPE (as inference engines store them).
    last_hidden: (d_model,) the output hidden state at the last position;
        decode_step feeds it back as the next input when none is given (a
        stand-in for sampling a token and embedding it, since we work on
        hidden states).
    The next position to be processed is `length`.
    """

    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    last_hidden: np.ndarray

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[1]) if self.keys else 0

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @classmethod
    def random(cls, model: ModelConfig, length: int, rng: np.random.Generator) -> "KVCache":
        """One layer's cache of `length` positions with standard-normal keys,
        values and last hidden state, drawn from rng in that order (a decode
        benchmark's stand-in for what a prefill would leave)."""
        shape = (model.n_kv_heads, length, model.head_dim)
        return cls((rng.standard_normal(shape).astype(np.float32),),
                   (rng.standard_normal(shape).astype(np.float32),),
                   rng.standard_normal(model.d_model).astype(np.float32))
