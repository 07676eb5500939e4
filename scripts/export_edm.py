"""Export an NVlabs/edm network pickle to the folder ``dj.load_pretrained`` reads.

EDM's ``.pkl`` files are pickled torch modules: loading one runs code, so this library never
does. Run this once where torch and a checkout of https://github.com/NVlabs/edm are importable:

    git clone https://github.com/NVlabs/edm && pip install torch safetensors
    curl -LO https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl
    python scripts/export_edm.py edm-cifar10-32x32-uncond-vp.pkl edm-cifar10-uncond-vp --edm edm

It writes ``OUT/config.json`` (``{"format": "edm", "precond", "model_type", "kwargs"}``: every
constructor argument of the precond) and ``OUT/model.safetensors`` (the precond's
``state_dict()`` in float32, keys unchanged). Then:

    python -m diffusion_jax sample --pretrained edm-cifar10-uncond-vp --sampler heun --nfe 35 ...
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path


def export(net, precond: str, kwargs: dict, out: Path) -> None:
    """Write ``net`` (an EDM precond module) built with ``kwargs`` to ``out``."""
    import torch  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(kwargs)
    model_type = kwargs.get("model_type") or type(net.model).__name__
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()
             if v.is_floating_point()}
    save_file(state, str(out / "model.safetensors"))
    config = {"format": "edm", "precond": precond, "model_type": model_type,
              "kwargs": {**kwargs, "model_type": model_type}}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=float) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="export an EDM .pkl to config.json + model.safetensors")
    ap.add_argument("pkl", help="an EDM network pickle (edm-*.pkl or baseline-*.pkl)")
    ap.add_argument("out", help="the folder to write")
    ap.add_argument("--edm", default=".", help="a checkout of NVlabs/edm (default: .)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.edm).resolve()))
    with open(args.pkl, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - the user's own file, in the user's environment
    net = data["ema"] if isinstance(data, dict) else data
    kwargs = dict(getattr(net, "init_kwargs", {}))
    if not kwargs:
        sys.exit(f"{args.pkl}: the network records no constructor arguments (init_kwargs); is "
                 "this an EDM pickle?")
    export(net, type(net).__name__, kwargs, Path(args.out))
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors "
          f"({type(net).__name__}, {kwargs.get('model_type')})")


if __name__ == "__main__":
    main()
