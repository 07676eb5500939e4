"""The method contract: the one place a generative family differs from another.

A method is a frozen object built once from the typed experiment (``build(ctx)`` in its own
``methods/NAME.py``). The training loop, the checkpoints, ``generate``, ``eval``, ``compare`` and
the CLI only ever call these members; every one has a default in ``MethodBase``, so callers ask
and never probe:

    abstract_state(mesh, rules) -> (abstract_state, shardings)   shapes only, nothing computed
    init(key) -> state                    jitted by the loop with out_shardings (created sharded)
    train_step(state, batch, key) -> (state, metrics)   pure; jitted with donation by the loop;
                                          may update several networks with several optimizers
    sample_params(state) -> params        what sampling uses (default: the EMA; sample_fields)
    sample(params, key, n, **controls) -> images   n samples with the method's default controls
    sampling(request, env) -> Sampling    a ``SampleRequest`` checked and turned into the chunk
                                          function ``generate`` and ``eval`` run
    sample_options                        the request fields (``sample`` flags) the family reads
    nfe(request) -> int                   network evaluations per sample under ``request``
    eval_requests(samplers, nfes, grids, guidance) -> [(row, request)]   eval's settings
    likelihood / bits_per_dim(params, x, key, **options) -> {name: bits/dim per image}
    interpolate(params, key, rows, steps, test_images, labels) -> images   slerp rows
    preview(params, key, n, test_images) -> (images, nrow)   the grid written while training
    evaluate(params, test_source) -> dict  figures reported when training ends ({} if none)
    generates, num_classes, sample_shape

``test_images(n)`` returns the first ``n`` test images in [-1, 1]; metrics must hold a ``"loss"``
scalar (the loop's NaN check reads it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.guidance import check_labels
from diffusion_jax.utils.interpolate import slerp


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What ``sample`` was asked for (``None``: the experiment's own setting). Which fields a
    family reads is its ``sample_options``; ``num``, ``batch`` and ``seed`` are everyone's."""
    num: int = 64
    batch: int = 256                   # samples per compiled call (memory does not grow with num)
    seed: int = 0
    sampler: Any = None                # a name (or, once --grid learned is read, a LearnedPC)
    steps: int | None = None
    grid: Any = None                   # a grid name, "learned", or the times (a tuple)
    labels: str | None = None          # "all" (one row per class), "K" or "a,b,c"
    prompts: tuple | None = None       # text-to-image: one prompt for all samples, or one each
    negative_prompt: str | None = None  # the unconditional half of guidance ("" if None)
    guidance: float | None = None      # classifier-free guidance scale
    classifier: str | None = None      # a noise-conditional classifier workdir
    classifier_scale: float = 1.0
    init_image: str | None = None      # .png / .npz / .npy, or "test"
    mask: str | None = None            # center|left|right|top|bottom|random or a file
    resample: int = 1                  # RePaint resamplings per step (1: replacement)
    strength: float | None = None      # SDEdit
    invert: str | None = None          # start from this image's inverted noise (DDIM inversion)
    low_res: str | None = None         # super-resolution input: file or "test"
    temperature: float | None = None   # flow / VAE / autoregressive: the sampling temperature
    interpolate: int = 0               # > 0: ``num`` rows of this many slerp steps
    quantize: str | None = None        # compress.MODES: int8 / int4 weights, int8-act
    prune: float | None = None         # magnitude pruning to this sparsity
    low_rank: float | None = None      # dense / 1x1 kernels at this fraction of their rank
    cache_every: int | None = None     # step caching: the network at every k-th step


COMMON_OPTIONS = ("num", "batch", "seed")


def changed_options(req: SampleRequest) -> list[str]:
    """The request fields set away from their defaults (beyond ``COMMON_OPTIONS``)."""
    return [f.name for f in dataclasses.fields(req)
            if f.name not in COMMON_OPTIONS and getattr(req, f.name) != f.default]


@dataclasses.dataclass(frozen=True)
class SamplingEnv:
    """What a method's ``sampling`` may need from outside (the workdir layer provides it):
    ``test_images(n)`` the first ``n`` test images; ``classifier(path) -> (model, params, info)``
    a classifier workdir; ``learned(sampler, steps, process_name) -> (ts, sampler)`` a stored
    learned grid (``FileNotFoundError`` if none); ``grid_file(path, sampler, steps, process_name)
    -> (ts, sampler, steps)`` a grid file (``--grid FILE.json``)."""
    test_images: Callable[[int], np.ndarray]
    classifier: Callable[[str], tuple] | None = None
    learned: Callable[[Any, int, str], tuple] | None = None
    grid_file: Callable[[str, Any, Any, str], tuple] | None = None


@dataclasses.dataclass
class Sampling:
    """A checked request: ``draw(params, key, start)`` makes rows ``start .. start + batch`` of
    ``n`` (the last chunk padded to ``batch``, so one compile serves every chunk)."""
    n: int
    batch: int
    draw: Callable[[Any, jax.Array, int], Any]
    inputs: np.ndarray | None = None   # what the samples were made from (masked / low-res)
    nrow: int | None = None
    labels: np.ndarray | None = None
    # the loaded sampling parameters -> what ``draw`` takes (e.g. quantised kernels)
    prepare: Callable[[Any], Any] | None = None


def parse_labels(spec: str, num_classes: int, n: int) -> tuple[np.ndarray, int | None]:
    """``"all"``: ``n // K`` per class, one row each -> ``(labels, nrow)``; ``"K"``/``"a,b"``:
    those labels repeated to ``n``."""
    if spec == "all":
        per = max(n // num_classes, 1)
        return np.repeat(np.arange(num_classes), per), per
    try:
        vals = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"--labels {spec!r}: give 'all', a class number 0..{num_classes - 1}, "
                         "or numbers separated by commas") from None
    check_labels(np.array(vals), num_classes)
    return np.resize(np.array(vals), n), None


def balanced_labels(num_classes: int) -> str:
    """The label spec of ``0, 1, ..., K-1, 0, ...`` (eval's class-balanced samples)."""
    return ",".join(str(k) for k in range(num_classes))


def take(x, start: int, b: int, n: int):
    """Rows ``start .. start+b`` of an array (or a dict of them) with ``n`` rows; the last chunk is
    padded with its first rows so that every chunk has one shape (one compile)."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: take(v, start, b, n) for k, v in x.items()} or None
    part = x[start: start + b]
    if len(part) < b:
        part = np.concatenate([np.asarray(part)] * (-(-b // len(part))))[:b]
    return jnp.asarray(part)


@runtime_checkable
class Method(Protocol):
    name: str
    generates: bool
    sample_options: frozenset
    likelihood: str | None

    def abstract_state(self, mesh, rules) -> tuple[Any, Any]: ...

    def init(self, key: jax.Array) -> Any: ...

    def train_step(self, state, batch: dict, key: jax.Array) -> tuple[Any, dict]: ...

    def sample_params(self, state) -> Any: ...

    def host_batch(self, batch: dict) -> dict: ...

    def sample(self, params, key: jax.Array, n: int, **controls) -> jax.Array: ...

    def sampling(self, req: SampleRequest, env: SamplingEnv) -> Sampling: ...

    def nfe(self, req: SampleRequest) -> int: ...

    def bits_per_dim(self, params, x, key: jax.Array, **options) -> dict: ...

    def preview(self, params, key: jax.Array, n: int,
                test_images: Callable[[int], Any]) -> tuple[Any, int | None]: ...

    def evaluate(self, params, test_source) -> dict: ...


class MethodBase:
    """Defaults of every capability: a family overrides what it has. The defaults describe a
    one-network-call generator (GAN, VAE, flow): ``sample`` per chunk, labels if conditional,
    slerp rows if ``interpolate`` is overridden, no likelihood."""
    name: str = "method"
    generates: bool = True
    sample_options: frozenset = frozenset()
    likelihood: str | None = None        # what bits_per_dim gives ("exact", "bound", "pf_ode")
    likelihood_options: frozenset = frozenset()  # the likelihood command's flags it reads
    no_likelihood: str = "this model has no likelihood"  # the refusal when likelihood is None
    # fields a training example must carry beyond image/label (checked before compiling)
    example_fields: tuple = ()
    # the train-state fields ``sample_params`` reads: what ``workdir.load`` restores
    sample_fields: tuple = ("ema_params",)

    @property
    def num_classes(self) -> int:
        return 0

    @property
    def takes_prompts(self) -> bool:
        """Whether the model is text-to-image (``--prompt``; a tokenizer and text encoder)."""
        return False

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One output's shape (a latent model's is its decoder's, not its state's)."""
        return tuple(self.shape)

    def sample_params(self, state):
        return state.ema_params

    def host_batch(self, batch: dict) -> dict:
        """A per-host numpy training batch -> the arrays the jitted ``train_step`` takes, on
        the host before the batch is laid out on devices (a text-to-image model tokenizes its
        ``caption`` strings here). Default: string fields dropped."""
        return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind not in "UO"}

    def sample(self, params, key, n: int, **controls):
        raise ValueError(f"a {self.name} does not generate samples")

    def sample_controls(self, req: SampleRequest) -> dict:
        """The ``sample(...)`` keyword arguments a request sets: ``temperature`` for families
        that declare it (override for others, e.g. a consistency model's ``steps``)."""
        if "temperature" in self.sample_options and req.temperature is not None:
            return {"temperature": req.temperature}
        return {}

    def sampling(self, req: SampleRequest, env: SamplingEnv) -> Sampling:
        if not self.generates:
            raise ValueError(f"a {self.name} does not generate samples")
        labels, nrow = None, None
        if req.labels is not None:
            if not self.num_classes:
                raise ValueError(f"--labels needs a class-conditional model; this is an "
                                 f"unconditional {self.name}")
            labels, nrow = parse_labels(req.labels, self.num_classes, req.num)
        n = len(labels) if labels is not None else req.num
        if req.interpolate:
            draw = lambda params, key, start: self.interpolate(
                params, key, n, req.interpolate, env.test_images, labels)
            return Sampling(n * req.interpolate, n * req.interpolate, draw, None,
                            req.interpolate, labels)
        b, controls = min(req.batch, n), self.sample_controls(req)

        def draw(params, key, start):
            cond = {} if labels is None else {"cond": {"y": take(labels, start, b, n)}}
            return self.sample(params, key, b, **controls, **cond)

        return Sampling(n, b, draw, None, nrow, labels)

    def nfe(self, req: SampleRequest) -> int:
        return 1

    def eval_requests(self, samplers, nfes, grids, guidance) -> list[tuple[dict, SampleRequest]]:
        """``eval``'s rows: ``(the row's labels, the request that makes its samples)``."""
        if guidance is not None:
            raise ValueError(f"--guidance is for class-conditional diffusion models; this is a "
                             f"{self.name}")
        return [({"sampler": self.name, "nfe": 1, "steps": 1, "grid": "-"}, SampleRequest())]

    def bits_per_dim(self, params, x, key, **options) -> dict:
        raise ValueError(self.no_likelihood)

    def network_fn(self, params, batch: int) -> tuple[Callable, tuple]:
        """``(fn, example_args)``: the network that sampling calls, as a pure function of
        arrays with the parameters bound (what ``export --format onnx|stablehlo`` writes)."""
        raise ValueError(f"a {self.name} has no denoiser network to export: export --format "
                         "onnx/stablehlo works on diffusion models")

    def interpolate(self, params, key, rows: int, steps: int, test_images, labels):
        raise ValueError(f"--interpolate is not an option of a {self.name}")

    def preview(self, params, key, n: int, test_images):
        return np.asarray(self.sample(params, key, n)), None

    def evaluate(self, params, test_source) -> dict:
        return {}


class StepsSampling:
    """For few-step families whose ``sample(params, key, n, steps=None)`` takes ``steps`` network
    evaluations (``sample_steps`` by default): ``sample --steps N`` is NFE N, and ``eval`` makes
    one row per NFE. Mix in before ``MethodBase``."""
    sample_options = frozenset({"steps"})

    def sample_controls(self, req: SampleRequest) -> dict:
        return {"steps": req.steps} if req.steps else {}

    def nfe(self, req: SampleRequest) -> int:
        return req.steps or self.sample_steps

    def eval_requests(self, samplers, nfes, grids, guidance):
        if guidance is not None:
            raise ValueError(f"--guidance is for class-conditional diffusion models; this is a "
                             f"{self.name}")
        return [({"sampler": self.name, "nfe": nfe, "steps": nfe, "grid": "-"},
                 SampleRequest(steps=nfe)) for nfe in nfes]


def class_rows_preview(method, params, key, n: int, test_images=None):
    """``preview`` for families whose ``sample(params, key, n, cond={"y": ...})`` takes labels:
    one row per class when class-conditional (``(images, per_row)``), else ``n`` samples."""
    k = method.num_classes
    if not k:
        return np.asarray(method.sample(params, key, n)), None
    per = max(n // k, 1)
    y = jnp.repeat(jnp.arange(k), per)
    return np.asarray(method.sample(params, key, per * k, cond={"y": y})), per


def slerp_rows(za, zb, steps: int):
    """``rows x steps`` latents along slerp paths from ``za`` to ``zb`` (``[rows, ...]`` each),
    flattened to ``[rows * steps, ...]``."""
    path = slerp(za, zb, jnp.linspace(0.0, 1.0, steps))
    return path.reshape((za.shape[0] * steps,) + za.shape[1:])
