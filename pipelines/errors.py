"""Errors a user can cause or fix. Their message is one line that says what to do."""


class VoxQLError(Exception):
    """Base class: the UI shows the message, the CLI prints it and exits non-zero."""


class ModelNotAvailable(VoxQLError):
    """A model or adapter could not be found or loaded."""


class BadInput(VoxQLError):
    """A file, question or argument that cannot be used."""
