"""Convert pytorch-fid's Inception weights (``pt_inception-2015-12-05-6726825d.pth``) to the
``.npz`` that ``diffusion_jax.eval.inception.load_inception`` reads. Needs torch (only here).

    python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth inception_fid.npz
"""

import sys

import torch

from diffusion_jax.eval.inception import from_torch_state_dict, save_weights

if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    sd = {k: v.numpy() for k, v in torch.load(src, map_location="cpu").items()}
    print("sha256 of the arrays:", save_weights(from_torch_state_dict(sd), dst))
