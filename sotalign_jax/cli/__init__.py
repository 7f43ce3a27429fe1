"""Command-line entry points: ``python -m sotalign_jax.cli.embed`` (embedding caches) and ``...cli.evaluate``."""
