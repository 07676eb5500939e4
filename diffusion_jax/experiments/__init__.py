"""The packaged experiments: one file per experiment, each with ``get_config()``.

They ship inside the package, so an installed copy (``pip install diffusion_jax``, a Colab
runtime) finds them by name: ``--config fashion_mnist_ddpm``. In a checkout the top-level
``experiments/`` is a link to this folder, so ``--config experiments/NAME.py`` works as well.
``python -m diffusion_jax experiments`` lists them.
"""
