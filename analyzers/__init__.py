"""Analyses over lazily read checkpoints; results are plain dataclasses consumed by the CLI renderers."""
