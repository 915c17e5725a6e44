"""Exceptions of the training package that the CLI turns into one-paragraph messages.

Kept free of TensorFlow imports so the CLI can report bad input without loading TensorFlow.
"""


class ExportError(Exception):
    """The export cannot be written (e.g. the version exists and overwrite is off)."""


class ImageError(ValueError):
    """An input image cannot be read or decoded."""


class RecipeError(ValueError):
    """Training settings that cannot work (e.g. too few samples for a validation split)."""
