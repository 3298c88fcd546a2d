"""The errors polypseg raises on purpose: each message says what is wrong and what to do.

Edges map them: the CLI to an exit code and one line, the servers to HTTP 4xx.
"""


class PolypsegError(Exception):
    """Base of every error a user can act on."""


class InputImageError(PolypsegError):
    """An image that cannot be read or used (unreadable, truncated, too large)."""


class PromptError(PolypsegError):
    """A prompt that does not fit the image or the model (empty box, point outside)."""


class CheckpointError(PolypsegError):
    """A checkpoint that is missing, unreadable, or made for another model."""


class ModelError(PolypsegError):
    """An unknown model name or an option the model does not support."""


class DatasetError(PolypsegError):
    """A dataset folder that is empty, or whose images and masks do not pair up."""
