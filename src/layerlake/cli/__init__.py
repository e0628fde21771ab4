"""The top floor: the ``layerlake`` command (``main``), its Hydra runner, and the demo."""
