"""Feature extractors for FD/KID/precision-recall: the project's Fashion-MNIST classifier
(penultimate layer; offline, trained by ``experiments/fashion_mnist_classifier.py``) or the FID
Inception-v3 with user-provided weights. Each is ``extract(images) -> (features, class_probs)``
jitted, with a ``name`` that every reported number carries."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.eval.inception import load_inception
from diffusion_jax.eval.metrics import check_image_range
from diffusion_jax.workdir import load_classifier


@dataclasses.dataclass
class Extractor:
    name: str
    fn: Callable  # images [B, H, W, C] in [-1, 1] -> (features [B, D], class probabilities [B, K])
    batch: int = 500

    def check(self, shape) -> int:
        """The feature dimension for images of ``shape`` (one image's); images the extractor
        cannot read are refused, before any sampling (shapes only: nothing is computed)."""
        try:
            feats, _ = jax.eval_shape(self.fn, jax.ShapeDtypeStruct((1,) + tuple(shape),
                                                                    jnp.float32))
            return int(feats.shape[-1])
        except Exception as e:  # noqa: BLE001 - any shape error of the network: one message
            raise ValueError(f"the feature extractor ({self.name}) cannot read {tuple(shape)} "
                             f"images ({type(e).__name__}); use an extractor made for this "
                             "model's image size and channels") from None

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        check_image_range(images)
        feats, probs = [], []
        for i in range(0, len(images), self.batch):
            f, p = self.fn(jnp.asarray(images[i: i + self.batch]))
            feats.append(np.asarray(f))
            probs.append(np.asarray(p))
        return np.concatenate(feats), np.concatenate(probs)


def classifier_extractor(workdir: str) -> Extractor:
    clf, params, info = load_classifier(workdir)
    acc = info.get("test_accuracy")
    name = (f"CNN classifier {workdir} (penultimate layer, {clf.feature_dim}-d"
            + (f", test accuracy {acc:.4f})" if acc is not None else ")"))

    @jax.jit
    def fn(x):
        logits, feats = clf.apply({"params": params}, x, jnp.zeros(x.shape[:1]), return_features=True)
        return feats, jax.nn.softmax(logits)

    return Extractor(name, fn)


def inception_extractor(weights: str, expected_sha256: str | None = None) -> Extractor:
    model, variables = load_inception(weights, expected_sha256)

    @jax.jit
    def fn(x):
        feats, logits = model.apply(variables, x)
        return feats, jax.nn.softmax(logits[:, 1:1001])  # the 1000 ImageNet classes

    return Extractor(f"Inception-v3 pool3 (2048-d, weights {weights})", fn, batch=100)


def make_extractor(classifier: str | None = None, inception: str | None = None) -> Extractor:
    if inception:
        return inception_extractor(inception)
    if classifier:
        return classifier_extractor(classifier)
    raise ValueError("no feature extractor: pass a classifier workdir (train-classifier) or an "
                     "Inception weights .npz")
