import sys

from diffusion_jax.cli import main

sys.exit(main())
