from diffusion_jax.eval.metrics import (check_image_range, fd_from_features, feature_stats,
                                        frechet_distance, inception_score, kid, load_stats,
                                        precision_recall, save_stats)

__all__ = ["check_image_range", "fd_from_features", "feature_stats", "frechet_distance",
           "inception_score", "kid", "load_stats", "precision_recall", "save_stats"]
