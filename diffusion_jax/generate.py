"""A trained workdir -> samples, for every family, through one path: the request is checked
against the family's ``sample_options``, turned into a chunk function by the method's
``sampling`` (every control of the family checked there, before anything is loaded or
compiled), and run by one chunk loop (memmap, chunk, NaN check). The CLI only parses flags.

    req = SampleRequest(num=16, labels="all", guidance=2.0)
    result = generate("runs/fm_cond", req)       # .images, .inputs, .nrow, .labels, .step
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sys
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from diffusion_jax.data.sources import first_images, get_source
from diffusion_jax.experiment import Experiment
from diffusion_jax.methods.base import (COMMON_OPTIONS, SampleRequest, Sampling, SamplingEnv,
                                        changed_options, parse_labels)
from diffusion_jax.utils.memory import check_fits
from diffusion_jax.workdir import load, load_classifier, read_experiment
from diffusion_jax.workdir_grids import load_grid_file, load_learned

__all__ = ["SampleRequest", "Generated", "generate", "check_request", "check_options",
           "check_compression",
           "sampling_env", "run_chunks", "parse_labels"]


@dataclasses.dataclass
class Generated:
    images: np.ndarray
    inputs: np.ndarray | None   # what the samples were made from (masked / upsampled images)
    nrow: int | None
    labels: np.ndarray | None
    step: int


def check_request(req: SampleRequest) -> None:
    """Flag values and combinations that cannot run, whatever the model."""
    if req.num < 1:
        raise ValueError(f"--num must be >= 1, got {req.num}")
    if req.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {req.batch}")
    if req.steps is not None and req.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {req.steps} (omit it for the experiment's "
                         "own number of steps)")
    if req.strength is not None and not 0.0 <= req.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {req.strength}")
    if req.invert and (req.init_image or req.strength is not None or req.mask):
        raise ValueError("--invert starts from an image's own noise; it does not combine with "
                         "--init-image, --strength or --mask")
    if (req.strength is not None or req.mask) and not req.init_image:
        raise ValueError("--mask and --strength edit an image: pass --init-image FILE (or 'test')")
    if req.strength is not None and req.mask:
        raise ValueError("choose one of --mask (inpainting) and --strength (SDEdit)")
    if req.resample < 1:
        raise ValueError(f"--resample must be >= 1, got {req.resample}")
    if req.resample != 1 and not req.mask:
        raise ValueError("--resample is RePaint's option for inpainting: pass --mask too")
    if req.interpolate and req.interpolate < 2:
        raise ValueError(f"--interpolate {req.interpolate}: give at least 2 steps per row")
    if req.negative_prompt is not None and not req.prompts:
        raise ValueError("--negative-prompt steers a prompt's guidance: pass --prompt too")
    if req.prompts is not None and req.labels is not None:
        raise ValueError("choose one of --prompt (text-to-image) and --labels (class-conditional)")
    if req.temperature is not None and req.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {req.temperature}")


def _flag(name: str) -> str:
    return "--prompt" if name == "prompts" else "--" + name.replace("_", "-")


def check_compression(method, req: SampleRequest, workdir) -> None:
    """``--quantize``/``--prune``/``--low-rank``/``--cache-every`` on a family whose sampling
    network cannot take them, refused naming the ones that can."""
    given = vars(req)
    for name in ("quantize", "prune", "low_rank", "cache_every"):
        if given[name] is not None and name not in method.sample_options:
            raise ValueError(f"{_flag(name)} works on a diffusion model's denoiser (pixel "
                             f"diffusion runs and pretrained DDPM/EDM folders"
                             f"{', latent pipelines' if name == 'cache_every' else ''}); "
                             f"{workdir} holds a {method.name} model")


def check_options(exp: Experiment, req: SampleRequest, workdir) -> None:
    """Flags the workdir's family does not read are refused, with the ones it does named."""
    method = exp.method
    check_compression(method, req, workdir)
    for name in changed_options(req):
        if name not in method.sample_options:
            valid = " ".join(_flag(o) for o in (*COMMON_OPTIONS, *sorted(method.sample_options)))
            raise ValueError(f"{_flag(name)} is not an option of {method.name} models; "
                             f"{workdir} holds one (its options: {valid} --out)")


def check_sizes(req: SampleRequest, shape, streamed: bool) -> None:
    """A request whose arrays cannot fit in this host's memory, refused before planning."""
    check_fits(min(req.batch, req.num), shape, f"--batch {req.batch}", copies=4)  # noise, output
    check_fits(req.num, (2,), f"--num {req.num}", bytes_per_value=8)  # labels, keys per row
    if not streamed:  # held in memory, then written
        check_fits(req.num, shape, f"--num {req.num} (use --out NAME.npy to stream to disk)")


def sampling_env(exp: Experiment, workdir) -> SamplingEnv:
    """What a method's ``sampling`` may ask of the workdir: test images, a classifier workdir,
    the workdir's learned grids."""
    def test_images(n: int) -> np.ndarray:
        test = get_source(exp.data.dataset, "test", exp.data.data_dir or None, exp.data.image_size)
        return first_images(test, n, exp.shape)

    learned = lambda sampler, steps, process: load_learned(workdir, sampler, steps, process)
    return SamplingEnv(test_images, load_classifier, learned, load_grid_file)


def generate(workdir: str, req: SampleRequest, out: str | None = None) -> Generated:
    """Samples from a workdir under every control of ``req``; all checks run before compiling.
    Samples are made ``req.batch`` at a time (one compiled call, reused; chunk ``i`` draws from
    ``fold_in(key, i)``) and checked for NaN/inf as they come; with ``out`` ending in ``.npy``
    each chunk goes to ``out`` as soon as it is made (see ``run_chunks``)."""
    check_request(req)
    exp = read_experiment(workdir)  # the checks below need only the experiment
    if not exp.method.generates:
        raise ValueError(f"{workdir} holds a {exp.method_name!r} run, which does not generate "
                         "samples")
    check_options(exp, req, workdir)
    check_sizes(req, exp.method.sample_shape, streamed=str(out).endswith(".npy"))
    plan = exp.method.sampling(req, sampling_env(exp, workdir))
    with output_lock(out):
        _, params, step = load(workdir)
        images = run_chunks(plan, params, req.seed, out, f"{workdir} (checkpoint step {step})")
    return Generated(images, plan.inputs, plan.nrow, plan.labels, step)


@contextlib.contextmanager
def output_lock(out):
    """One writer per streamed ``.npy``: a second ``sample`` to the same ``--out`` is refused
    with the holder's pid, before it loads or compiles anything (``NAME.npy.lock``, an
    advisory lock the kernel releases when the holder dies, even by ``kill -9``)."""
    if out is None or not str(out).endswith(".npy"):
        yield
        return
    lock = Path(str(out) + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"--out {out} is being written by another sample run (pid {holder}): "
                         "wait for it to finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def run_chunks(plan: Sampling, params, seed: int, out: str | None = None,
               source: str = "the model", on_chunk=None) -> np.ndarray | None:
    """``plan.n`` samples, ``plan.batch`` per compiled call, chunk ``i`` from
    ``fold_in(key(seed), i)``; NaN/inf stops the run naming the rows. With ``out`` ending in
    ``.npy`` the rows stream into ``NAME.partial.npy`` beside it, renamed to ``out`` only once
    every row is made: an existing ``out`` is never left half-written. With ``on_chunk``, each
    chunk goes to ``on_chunk(start, chunk)`` and nothing is kept (returns ``None``): evaluation
    streams any number of samples through its feature extractor this way."""
    n, b = plan.n, plan.batch
    if plan.prepare is not None:
        params = plan.prepare(params)
    partial, images, done = None, None, 0
    key = jax.random.key(seed)
    bar = tqdm(range(0, n, b), desc="sample", disable=n <= b)
    try:
        for i, start in enumerate(bar):
            chunk = np.asarray(plan.draw(params, jax.random.fold_in(key, i), start))[: n - start]
            if not np.all(np.isfinite(chunk)):
                raise FloatingPointError(f"samples {start}..{start + len(chunk) - 1} from "
                                         f"{source} hold NaN/inf: the parameters or the sampler "
                                         "diverged")
            if on_chunk is not None:
                on_chunk(start, chunk)
                continue
            if images is None:
                partial = _partial_path(out)
                images = (np.lib.format.open_memmap(partial, "w+", np.float32,
                                                    (n,) + chunk.shape[1:])
                          if partial else np.empty((n,) + chunk.shape[1:], np.float32))
            images[start: start + len(chunk)] = chunk
            done = start + len(chunk)
    except BaseException:
        bar.close()  # ends the bar's line: an error message after it starts on its own line
        if partial is not None and images is not None:
            images.flush()
            print(f"kept the {done} finished rows of {n} in {partial} ({out} is unchanged)",
                  file=sys.stderr)
        raise
    if partial is not None:
        images.flush()
        os.replace(partial, out)
        images = np.load(out, mmap_mode="r")
    return images


def _partial_path(out) -> Path | None:
    """Where a streamed ``.npy`` grows until it is whole: ``NAME.partial.npy`` beside it."""
    if out is None or not str(out).endswith(".npy"):
        return None
    return Path(str(out)[:-4] + ".partial.npy")
