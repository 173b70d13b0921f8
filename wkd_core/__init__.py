"""Wasserstein knowledge distillation: losses, models, distillers and the trainer."""
