"""Exception types: every error a user can cause names the file, key or value at fault."""


class PerceptsrError(Exception):
    """Base class for errors raised deliberately by perceptsr."""


class ImageReadError(PerceptsrError, OSError):
    """An image file is missing, unreadable, corrupt or truncated."""


class ConfigError(PerceptsrError, ValueError):
    """A config key is unknown, mistyped or out of range."""


class CheckpointError(PerceptsrError, ValueError):
    """A checkpoint cannot be read, recognised or loaded strictly."""


class AssetError(PerceptsrError, FileNotFoundError):
    """A weight or parameter file is unavailable (offline and not found locally)."""


class MetricInputError(PerceptsrError, ValueError):
    """A metric received input of the wrong shape, range or size."""


class ExportError(PerceptsrError, RuntimeError):
    """A model cannot be exported, or the exported graph does not compute what the model computes."""
