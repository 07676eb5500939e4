import os

# Before jax is imported anywhere: 8 host devices so that sharding is exercised for real, and
# LLVM's optimisation level 0 for the code XLA:CPU emits. The suite's tiny programs spend far
# longer compiling than running: at level 0 test_remat_gives_the_same_gradients took 56 s against
# 107 s, tests/test_samplers.py 127 s against 143 s (one machine, one after the other). XLA's own
# HLO passes still run, and float semantics are the same (no fast-math either way).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run, inherited by the trainer, notebook and
# multi-process subprocesses: many tests build the same tiny programs again (each test jits its
# own train step or sampler; every fault-injection child recompiles the toy step), and XLA:CPU
# spends most of this suite compiling. pytest-xdist's workers inherit it from the controlling
# process, which alone removes it at the end. Fresh per run, so a clean clone measures what CI measures;
# the key includes XLA_FLAGS, so runs with and without the CPU setting never share an entry.
import tempfile  # noqa: E402

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="diffusion_jax_tests_xla_")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:  # a cache the user pointed us at is theirs to keep
        import shutil
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def _config(name: str, overrides):
    from diffusion_jax.config import apply_override, load_config

    cfg = load_config(str(EXPERIMENTS / name))
    for o in overrides:
        apply_override(cfg, o)
    return cfg


def toy_overrides(steps: int = 4) -> list[str]:
    """The toy experiment at smoke size: an MLP compiles in seconds, so the loop's mechanics
    (grain iterator, orbax, resume, signals) are tested without waiting on a U-Net compile."""
    return ["model.hidden=16", "model.depth=2", f"train.steps={steps}", "train.batch_size=8",
            "train.log_every=1", "train.ckpt_every=2", "sample.num=16", "sample.num_steps=2",
            "optimizer.warmup_steps=1"]


def toy_config(steps: int = 4):
    return _config("toy_gmm.py", toy_overrides(steps))


def tiny_image_config(tmp_path, steps: int = 2, n_images: int = 64):
    """The demo experiment on random 8x8 images with a tiny U-Net."""
    rng = np.random.default_rng(0)
    path = Path(tmp_path) / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, size=(n_images, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, n_images))
    return _config("fashion_mnist_ddpm.py", [
        f"data.dataset=npz:{path}", "data.image_size=8", "model.channels=8",
        "model.channel_mult=(1, 2)", "model.attn_resolutions=()", f"train.steps={steps}",
        "train.batch_size=8", "train.log_every=1", "train.ckpt_every=2", "train.ema_start=0",
        "sample.num=4", "sample.num_steps=2", "optimizer.warmup_steps=1",
        "train.time_limit_minutes=0.0"])


FAMILY_OVERRIDES = {
    "gan": ["model.ch=4", "model.d_ch=4", "gan.z_dim=8"],
    "vae": ["model.ch=4", "model.latent_dim=4", "vae.iw_samples=4", "vae.kl_warmup=2"],
    "flow": ["model.steps=2", "model.hidden=8"],
    "autoregressive": ["model.channels=4", "model.blocks=1", "model.num_mix=2"],
    "meanflow": ["model.channels=4", "model.channel_mult=(1, 2)", "model.attn_resolutions=()"],
}


def family_config(family: str, tmp_path, steps: int = 4, extra=()):
    """A GAN / VAE / flow / ... experiment at smoke size on random 8x8 8-bit images with labels (the
    same file for the same ``tmp_path``, so a resumed run sees the same data)."""
    path = Path(tmp_path) / "tiny_family.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, images=rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8),
                 labels=rng.integers(0, 10, 64))
    return _config(f"fashion_mnist_{family}.py", [
        f"data.dataset=npz:{path}", "data.image_size=8", f"train.steps={steps}",
        "train.batch_size=8", "train.log_every=1", "train.ckpt_every=2", "train.ema_start=0",
        "train.time_limit_minutes=0.0", "sample.num=4", *FAMILY_OVERRIDES[family], *extra])


def experiment(cfg):
    from diffusion_jax.experiment import from_config

    return from_config(cfg)


def cli_error(capsys, argv) -> str:
    """Run the CLI on arguments that must fail; returns its one-line error."""
    from diffusion_jax.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="session")
def configs():
    """The config helpers above, for tests (no test module imports another)."""
    import types
    return types.SimpleNamespace(toy=toy_config, toy_overrides=toy_overrides,
                                 tiny_image=tiny_image_config, family=family_config,
                                 experiment=experiment,
                                 cli_error=cli_error, root=ROOT, xla_flags=TEST_XLA_FLAGS)
