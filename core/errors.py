"""Errors a person can act on. Each message says what is wrong, where, and what to do."""


def unreadable_reason(exc: BaseException) -> str:
    """Why a weights or state file cannot be read, in a line. torch's advice to unpickle with
    weights_only=False (which would run whatever code the file holds) is never passed on."""
    import pickle

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError) or "pickle" in text.lower():
        return "a damaged file, or a pickle that is not plain weights (it is never run)"
    return text[:300]


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
