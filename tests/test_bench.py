import json
import sys

import diffusion_jax as dj
from diffusion_jax.bench.sampler_bench import run_benchmark
from diffusion_jax.samplers import steps_for_budget


def test_steps_for_budget_counts_nfe_honestly():
    assert steps_for_budget("heun", 5) == 2 and dj.total_nfe("heun", 2) == 5
    assert steps_for_budget("dpmpp_2m", 10) == 9
    # dpm_solver_3 takes 3 NFE a step: 5 NFE buy one step + the final call
    assert steps_for_budget("dpm_solver_3", 5) == 1 and dj.total_nfe("dpm_solver_3", 1) == 4
    assert steps_for_budget("heun", 2) is None  # not even one 2-NFE step + the final call


def test_benchmark_writes_table_json_and_plot(tmp_path):
    rows, _ = run_benchmark(tmp_path, [5, 20], ["ddim", "dpmpp_2m", "ddpm"], ["ring2d"], batch=64,
                            overhead=False, goal_nfes=())
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["cases"]) == 6
    by = {(r["sampler"], r["nfe"]): r for r in rows}
    # more NFE, smaller error; the 2nd-order solver beats DDIM at equal NFE
    assert by[("dpmpp_2m", 20)]["rmse"] < by[("dpmpp_2m", 5)]["rmse"]
    assert by[("dpmpp_2m", 20)]["rmse"] < by[("ddim", 20)]["rmse"]
    assert by[("ddpm", 20)]["rmse"] is None and by[("ddpm", 20)]["logp_gap"] is not None
    assert "| dpmpp_2m |" in (tmp_path / "results.md").read_text()
    from PIL import Image
    with Image.open(tmp_path / "error_vs_nfe.png") as img:  # the figure: 5.5 x 4.5 in per case
        assert img.size == (round(5.5 * 110) * len(res["cases"]) // 6, round(4.5 * 110))


def test_goal_table_compares_against_the_baseline_on_held_out_noise():
    from diffusion_jax.bench.sampler_bench import goals

    rows = goals(["ring2d"], (5,), learned=("dpmpp_2m",), batch=64, calib=16, iters=30,
                 pool=("ddim", "dpmpp_2m"), log=lambda *_: None)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"baseline", "logsnr", "default", "learned"}
    assert by["baseline"]["ratio_to_baseline"] == 1.0
    # the baseline is the better of DDIM and DPM-Solver++2M with the first-order final jump
    assert by["baseline"]["rmse"] == min(by["baseline"]["all"].values())
    # calibrated on other noise, the learned grid still beats the logsnr grid it started from
    assert by["learned"]["all"]["dpmpp_2m"] < by["logsnr"]["all"]["dpmpp_2m"]


def test_flop_count_matches_closed_forms():
    import jax
    import jax.numpy as jnp

    from diffusion_jax.bench.flops import count_flops

    B, H, W, ci, co = 2, 8, 8, 6, 4
    x, w = jnp.ones((B, 16)), jnp.ones((16, 5))
    assert count_flops(lambda x, w: x @ w, x, w) == 2 * B * 16 * 5
    img, k = jnp.ones((B, H, W, ci)), jnp.ones((3, 3, ci, co))
    conv = lambda img, k, g=1: jax.lax.conv_general_dilated(  # noqa: E731
        img, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)
    assert count_flops(conv, img, k) == 2 * B * H * W * co * 9 * ci
    kg = jnp.ones((3, 3, ci // 2, co))  # two groups: each output sees half the inputs
    assert count_flops(lambda a, b: conv(a, b, 2), img, kg) == 2 * B * H * W * co * 9 * ci // 2
    q, kk = jnp.ones((B, 7, 3, 4)), jnp.ones((B, 9, 3, 4))
    assert count_flops(lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k), q, kk) == 2 * B * 3 * 7 * 9 * 4
    # a scan counts its body length times; a cond its dearer branch
    scan = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]  # noqa: E731
    sq = jnp.ones((16, 16))
    assert count_flops(scan, x, sq) == 5 * 2 * B * 16 * 16
    cond = lambda p, x, w: jax.lax.cond(p, lambda: (x @ w) @ w.T @ w, lambda: x @ w)  # noqa: E731
    assert count_flops(cond, True, x, w) == 2 * B * 16 * 5 * 2 + 2 * B * 5 * 16
    # forward + both gradients of a product: exactly three products of the same size
    f = lambda x, w: (x @ w).sum()  # noqa: E731
    assert count_flops(jax.grad(f, argnums=(0, 1)), x, w) == 3 * count_flops(f, x, w)
    # XLA's own count of a lone matmul agrees
    a = jnp.ones((64, 32))
    ca = jax.jit(lambda a, b: a @ b).lower(a, a.T).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    assert ca["flops"] == count_flops(lambda a, b: a @ b, a, a.T) == 2 * 64 * 64 * 32


def test_bench_train_reports_model_flops_memory_and_throughput(configs, tmp_path):
    from diffusion_jax.bench.train import bench_train

    cfg = configs.tiny_image(tmp_path)
    r = bench_train(configs.experiment(cfg), steps=1)
    assert r["img_per_s"] > 0 and r["per_device_mb"] > 0 and r["devices"] == 8
    assert 0 < r["mfu"] < 1 and r["model_gflop_per_step"] > 0
    cfg.model.remat = "full"  # recomputation is not model work: same model FLOPs, more XLA FLOPs
    m = bench_train(configs.experiment(cfg), memory_only=True)
    assert m["model_gflop_per_step"] == r["model_gflop_per_step"]
    assert m["xla_gflop_per_step"] > r["xla_gflop_per_step"] and "img_per_s" not in m


def test_bench_train_peer_errors(configs, capsys, monkeypatch):
    toy = str(configs.root / "experiments" / "toy_gmm.py")
    err = configs.cli_error(capsys, ["bench-train", "--config", toy, "--peer", "jaxlib"])
    assert "--peer: unknown peer 'jaxlib'" in err and "valid: torch" in err
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    monkeypatch.setitem(sys.modules, "diffusers", None)
    err = configs.cli_error(capsys, ["bench-train", "--config", toy, "--peer", "torch"])
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in err
