"""Training side (torch): data, augmentation, the twins, the fit, evaluation on the test split."""
