"""The package's layering: a lower layer never imports a higher one (read from the source)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "diffusion_jax"

# layer of each top-level module / subpackage (DESIGN.md's picture)
LAYER = {"processes": 0, "parameterization": 0, "losses": 0, "guidance": 0, "likelihood": 0,
         "samplers": 0, "gmm": 0, "conditioning": 0, "cpu_flags": 0, "utils": 0, "consistency_math": 0,
         "models": 1, "optim": 1, "compress": 1,
         "methods": 2, "data": 2, "parallel": 2, "checkpoint": 2, "pretrained": 2,
         "experiment": 3, "generate": 3, "workdir": 3, "config": 3, "workdir_grids": 3, "deploy": 3, "settings": 1,
         "train": 4, "eval": 4, "bench": 4,
         "cli": 5, "__main__": 5, "experiments": 5}


def _unit(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffusion_jax"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], node.lineno
            else:  # from diffusion_jax import x
                for a in node.names:
                    yield a.name, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("diffusion_jax."):
                    yield a.name.split(".")[1], node.lineno


def test_no_lower_layer_imports_a_higher_one():
    bad = []
    for path in PKG.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        assert unit in LAYER, f"{path}: add its layer to LAYER"
        for target, line in _imports(path):
            if target in LAYER and LAYER[target] > LAYER[unit]:
                bad.append(f"{path.relative_to(PKG)}:{line} ({unit}, layer {LAYER[unit]}) imports "
                           f"{target} (layer {LAYER[target]})")
    assert not bad, "\n".join(bad)


def test_train_and_eval_do_not_import_each_other():
    for sub, other in (("train", "eval"), ("eval", "train"), ("data", "eval"), ("data", "bench")):
        for path in (PKG / sub).rglob("*.py"):
            assert all(t != other for t, _ in _imports(path)), f"{path} imports {other}"


def test_callers_ask_methods_and_samplers_instead_of_probing_them():
    """Outside ``methods/``, nothing probes a method or compares family names; nothing probes a
    sampler (the contracts declare every capability)."""
    import re
    probe = re.compile(r"getattr\(.*method|hasattr\(.*method|method\.name ==|method_name ==|"
                       r"hasattr\(sampler|hasattr\(obj")
    bad = [f"{p.relative_to(PKG)}:{n}: {line.strip()}"
           for p in PKG.rglob("*.py") if "methods" not in p.relative_to(PKG).parts
           for n, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert not bad, "\n".join(bad)


def test_functions_stay_short():
    """No function over 60 lines (the training loop 80, the CLI's 40): STYLE.md's screenful."""
    long = []
    for path in PKG.rglob("*.py"):
        limit = 40 if path.name == "cli.py" else 80 if path.name == "loop.py" else 60
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)
