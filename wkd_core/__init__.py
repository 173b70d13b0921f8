"""Wasserstein knowledge distillation: losses, models, distillers and the trainer.

Importing ``wkd_core`` itself is cheap and torch-free; import the subpackages
(``wkd_core.losses``, ``wkd_core.models``, ``wkd_core.train`` …) for the functionality.
"""

__version__ = "0.1.0"
