import json

import diffusion_jax as dj
from diffusion_jax.bench.samplers import run_benchmark
from diffusion_jax.samplers import steps_for_budget


def test_steps_for_budget_counts_nfe_honestly():
    assert steps_for_budget("heun", 5) == 2 and dj.total_nfe("heun", 2) == 5
    assert steps_for_budget("dpmpp_2m", 10) == 9
    # dpm_solver_3 takes 3 NFE a step: 5 NFE buy one step + the final call
    assert steps_for_budget("dpm_solver_3", 5) == 1 and dj.total_nfe("dpm_solver_3", 1) == 4
    assert steps_for_budget("heun", 2) is None  # not even one 2-NFE step + the final call


def test_benchmark_writes_table_json_and_plot(tmp_path):
    rows, _ = run_benchmark(tmp_path, [5, 20], ["ddim", "dpmpp_2m", "ddpm"], ["ring2d"], batch=64,
                            overhead=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["cases"]) == 6
    by = {(r["sampler"], r["nfe"]): r for r in rows}
    # more NFE, smaller error; the 2nd-order solver beats DDIM at equal NFE
    assert by[("dpmpp_2m", 20)]["rmse"] < by[("dpmpp_2m", 5)]["rmse"]
    assert by[("dpmpp_2m", 20)]["rmse"] < by[("ddim", 20)]["rmse"]
    assert by[("ddpm", 20)]["rmse"] is None and by[("ddpm", 20)]["logp_gap"] is not None
    assert "| dpmpp_2m |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "error_vs_nfe.png").stat().st_size > 1000
