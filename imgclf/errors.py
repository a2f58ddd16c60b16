"""Errors a user can fix (bad params, bad data, a model that learned nothing): one line each, never a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """An error caused by the user's input: reported as one line, never as a traceback."""


class ConfigError(PipelineError):
    """A missing, unknown, mistyped or out-of-range key in params.yaml."""


class DataError(PipelineError):
    """Input data that the pipeline cannot use: a missing folder, an empty class, a bad checkpoint."""


class TrainingError(PipelineError):
    """A training run whose result must not be used: a model that learned nothing."""


class MissingModel(DataError):
    """A model file that is not there: says which stage writes it."""

    def __init__(self, path, stage: str):
        super().__init__(f"{path}: model file not found (run the {stage} stage first)")
