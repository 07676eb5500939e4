"""diffusion_jax: diffusion and score-based generative models in JAX/Flax.

    import diffusion_jax as dj
    process = dj.processes.VP.linear()
    x0 = dj.sample(denoise, process, x_T, sampler="dpmpp_2m", num_steps=10, key=key)
"""

import os as _os
import signal as _signal
import sys as _sys


def _stop_while_starting(signum, frame):
    name = "Ctrl-C (SIGINT)" if signum == _signal.SIGINT else "SIGTERM"
    _sys.stderr.write(f"error: stopped by {name} while starting; nothing was written\n")
    _os._exit(128 + signum)


# ``python -m diffusion_jax``: a signal during the imports below (seconds: jax, flax, orbax)
# ends the program with one line and 128 + signal; the CLI then installs its own handlers.
# Imported as a library, nothing is installed.
_argv = getattr(_sys, "orig_argv", [])
if "-m" in _argv and _argv[_argv.index("-m") + 1:][:1] == ["diffusion_jax"]:
    for _s in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(_s, _stop_while_starting)

from diffusion_jax import cpu_flags as _cpu_flags  # noqa: E402

_cpu_flags.apply()  # before anything below imports jax: XLA reads XLA_FLAGS once, at backend start

from diffusion_jax import guidance, likelihood, parameterization, processes, samplers
from diffusion_jax import gmm
from diffusion_jax.config import load_config
from diffusion_jax.parameterization import make_denoiser
from diffusion_jax.samplers import GRIDS, SAMPLERS, invert, make_grid, optimize_grid, optimize_solver, sample, total_nfe


# The functions below import the training and evaluation layers when called: ``import
# diffusion_jax`` stays the math (processes, samplers, likelihood) without orbax, grain or TFDS.


def build_experiment(config):
    """The typed ``Experiment`` (data, mesh, optimizer, train, sample settings and its method)
    of an experiment ``ConfigDict``."""
    from diffusion_jax.experiment import from_config

    return from_config(config)


def train_experiment(config, workdir: str) -> dict:
    """Run (or resume) an experiment; returns ``{"status", "step", "samples", "state", ...}``."""
    from diffusion_jax.experiment import from_config
    from diffusion_jax.train.loop import train

    exp = from_config(config)
    periodic = None
    if exp.train.fid_every:
        from diffusion_jax.eval.sample_eval import training_fd

        periodic = training_fd(exp, workdir)
    return train(exp, workdir, periodic)


def compare(workdirs, classifier: str, num: int = 2000, out: str = "compare", bpd_num: int = 256,
            labels=None) -> list[dict]:
    """Trained workdirs of any families side by side (``compare.md``/``.json``/``.png`` in
    ``out``); see ``diffusion_jax.eval.compare``."""
    from diffusion_jax.eval.compare import compare as run

    return run(workdirs, classifier, num, out, bpd_num, labels)


def sampler_fn(model, process, parameterization, sampler: str, num_steps: int, grid: str = "default",
               guidance_scale: float | None = None):
    """A jitted ``fn(params, x_T, key, cond=None, known=None, mask=None) -> samples`` for a trained
    flax model (``cond={"y": labels}`` with ``guidance_scale``: classifier-free guidance;
    ``known``/``mask``: inpainting). See ``diffusion_jax.methods.diffusion_sampling``."""
    from diffusion_jax.methods.diffusion_sampling import make_sample_fn

    return make_sample_fn(model, process, parameterization, sampler, num_steps, grid, guidance_scale)


def load_pretrained(path, mesh=None, rules=None):
    """A local pretrained folder (diffusers ``UNet2DModel`` pipeline or an EDM export) as a
    ``Pretrained``: ``process``, ``denoiser(x, t, labels=None) -> x0_hat``, ``shape``,
    ``num_classes``, ``params`` (sharded). Safetensors only; nothing is downloaded."""
    from diffusion_jax.pretrained import load_pretrained as load

    return load(path, mesh, rules)


__version__ = "0.1.0"

__all__ = ["processes", "parameterization", "samplers", "gmm", "guidance", "likelihood", "sample",
           "SAMPLERS", "GRIDS", "make_grid", "total_nfe", "make_denoiser", "load_config",
           "build_experiment", "train_experiment", "sampler_fn", "compare", "load_pretrained",
           "__version__"]
