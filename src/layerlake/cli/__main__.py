"""``python -m layerlake.cli``: the same as the ``layerlake`` command."""

from layerlake.cli.main import entrypoint

entrypoint()
