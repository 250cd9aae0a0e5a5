"""The project's own exception types: every refusal a user can meet is one of these."""


class UnetGradcamError(Exception):
    """Base class: a problem with the user's input that the message explains."""


class CheckpointError(UnetGradcamError):
    """A checkpoint file could not be used as a Pytorch-UNet model."""


class InputError(UnetGradcamError, ValueError):
    """An image or a parameter that the pipeline cannot work with."""


class Cancelled(UnetGradcamError):
    """The run was cancelled through its cancellation token; nothing was returned."""
