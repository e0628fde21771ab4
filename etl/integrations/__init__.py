"""Small adapters that let a training library drive a tracked run: one module per library, each imported
only by whoever uses that library (``transformers``, ``lightning``, ``accelerate``, ``hydra``)."""
