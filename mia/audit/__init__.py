"""Dataset inference: was this set of images used to train the target? (docs/method.md, "dataset inference")."""
