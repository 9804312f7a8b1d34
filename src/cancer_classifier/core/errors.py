"""One error hierarchy. A ``CancerClassifierError`` is a problem the user can fix: its message says
what, where and what to do. The stage runner prints it as one line and the web app answers it with its
``status``; anything else is a bug, shown with its full traceback (stages) or logged (the app)."""


class CancerClassifierError(Exception):
    """Base of every error meant for the user. ``status`` is the HTTP status the app answers it with."""

    status = 500


class ConfigError(CancerClassifierError, ValueError):
    """A configuration file is missing, unreadable, or has a wrong key or value; the message names
    the file, the key and what is expected."""


class DataSourceError(CancerClassifierError):
    """A data source is missing, unreadable or malformed; the message names it and what to do."""


class StageInputError(CancerClassifierError):
    """A stage's input is missing or stale; the message says which and what to run."""


class TrackingError(CancerClassifierError):
    """A tracking server could not do what was asked; the message names it and what to do."""


class ImageDecodeError(CancerClassifierError, ValueError):
    """A file is not an image this project reads (PNG, JPEG, DICOM), or is corrupt."""

    status = 400


class ImageTooLarge(ImageDecodeError):
    """An image over a byte or pixel budget, found before its pixels are decoded."""

    status = 413


class EngineUnavailable(CancerClassifierError):
    """An inference engine or precision this machine cannot run."""


class ModelUnavailable(CancerClassifierError):
    """No model can be served yet; the message says why and what to run."""

    status = 503


class ModelCardUnavailable(CancerClassifierError):
    """The served model has no model card; the message says why."""

    status = 404
