"""The training job: data loading, the lesson's model, recipes, export, evaluation, visualisation.

Usage: ``python -m training --help`` (see :mod:`training.cli`).
"""
