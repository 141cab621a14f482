"""Errors a person can act on. Each message says what is wrong, where, and what to do."""


class LuminaError(Exception):
    """Base class: the message is shown to the user as-is, without a traceback."""


class RequestError(LuminaError):
    """A generation setting is out of range or unknown."""


class ModelLoadError(LuminaError):
    """A model source is missing, partial, corrupt or of another architecture."""


class DeviceError(LuminaError):
    """The requested device or precision is not available here."""


class OutputError(LuminaError):
    """An image could not be written (folder not writable, disk full)."""


class MetadataError(LuminaError):
    """An image's settings could not be read."""


class Cancelled(LuminaError):
    """The user cancelled a running job."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)
