"""Training the CNN classifier: the offline FID feature extractor (clean images) or the
noise-conditional classifier of classifier guidance (``process`` given: images noised at
uniform random ``t``)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from diffusion_jax.data import image_pipeline
from diffusion_jax.models.classifier import Classifier


def image_batches(source, batch: int):
    for i in range(0, len(source), batch):
        idx = np.arange(i, min(i + batch, len(source)))
        ex = [source[int(j)] for j in idx]
        x = np.stack([e["image"] for e in ex]).astype(np.float32) / 127.5 - 1.0
        yield (x if x.ndim == 4 else x[..., None]), np.array([e["label"] for e in ex])


def random_shift(x, shift: int, key):
    """Translate each image by up to ``shift`` pixels in each direction, filling with -1."""
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), constant_values=-1.0)
    off = jax.random.randint(key, (b, 2), 0, 2 * shift + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, off)


def accuracy(model: Classifier, params, source, batch: int = 1000) -> float:
    f = jax.jit(lambda x: jnp.argmax(model.apply({"params": params}, x,
                                                 jnp.zeros(x.shape[:1])), -1))
    correct = sum(int(np.sum(np.asarray(f(x)) == y)) for x, y in image_batches(source, batch))
    return correct / len(source)


def train_classifier(model: Classifier, train_source, test_source, steps: int, batch_size: int,
                     lr: float, seed: int, workdir: str | Path, process=None,
                     random_flip: bool = False, process_name: str | None = None,
                     shift: int = 0) -> dict:
    """``shift``: random translations by up to that many pixels (background-filled), the
    augmentation that takes the small CNN past 93% on Fashion-MNIST."""
    workdir = Path(workdir).absolute()
    data = iter(image_pipeline(train_source, batch_size, seed, random_flip))
    key = jax.random.key(seed)
    params = model.init(key, jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,)))["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, min(100, max(steps // 10, 1)),
                                                         max(steps, 2)), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y, k):
        k_t, k_e, k_d, k_s = jax.random.split(k, 4)
        if shift:
            x = random_shift(x, shift, k_s)
        t = jnp.zeros(x.shape[:1])
        if process is not None:
            t = jax.random.uniform(k_t, x.shape[:1], minval=process.t_min, maxval=process.t_max)
            a, s = process.alpha(t)[:, None, None, None], process.sigma(t)[:, None, None, None]
            x = a * x + s * jax.random.normal(k_e, x.shape)

        def loss_fn(p):
            logits = model.apply({"params": p}, x, t, train=True, rngs={"dropout": k_d})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    for i in (bar := tqdm(range(steps), desc="classifier", dynamic_ncols=True)):
        b = next(data)
        params, opt, loss = step(params, opt, b["image"], b["label"], jax.random.fold_in(key, i))
        if i % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    acc = accuracy(model, params, test_source) if process is None else None
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(workdir / "params", params, force=True)
    ckpt.wait_until_finished()
    info = {"test_accuracy": acc, "steps": steps, "noise_conditional": process is not None,
            "process": process_name,
            "channels": model.channels, "feature_dim": model.feature_dim, "head": model.head,
            "num_classes": model.num_classes}
    (workdir / "classifier.json").write_text(json.dumps(info))
    print(json.dumps(info))
    return {"params": params, **info}


def load_classifier(workdir: str | Path, with_info: bool = False):
    """The classifier a ``train_classifier`` run saved in ``workdir``: ``(model, params)``, and its
    ``classifier.json`` record with ``with_info=True``."""
    path = Path(workdir) / "classifier.json"
    if not path.exists():
        raise SystemExit(f"no classifier in {workdir} ({path.name} missing): train one with "
                         "`python -m diffusion_jax train-classifier --config "
                         f"experiments/fashion_mnist_classifier.py --workdir {workdir}`")
    info = json.loads(path.read_text())
    model = Classifier(info["num_classes"], info["channels"], info["feature_dim"],
                       info["noise_conditional"], head=info.get("head", "mean"))
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                               jnp.zeros((1,)))["params"])
    params = ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "params", target)
    return (model, params, info) if with_info else (model, params)
