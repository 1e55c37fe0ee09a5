"""Every error a person can fix: a setting, a data set, a model's weights or an export that cannot be used as given.

The commands print such an error's message alone on one line and exit with status 2; any other exception is a bug
and keeps its traceback. Each message names the setting, file or line, and the fix.
"""


class UserError(ValueError):
    """A problem with the settings or the data, not a bug."""


class ConfigError(UserError):
    """A setting with a bad value; the message names the setting and what it accepts."""


class DataError(UserError):
    """A data set that cannot be used as given; the message names the file and the fix."""


class ImageTooLarge(DataError):
    """An image over the pixel limit, refused from its header before a pixel is decoded."""


class UnsupportedImage(DataError):
    """An image file Pillow can open but this project cannot use as RGB (a multi-band TIFF): refused by name."""


class ModelError(UserError):
    """Bad model settings or weights; the message names the setting or file and the fix."""


class WeightsUnavailable(ModelError):
    """Pretrained weights that cannot be downloaded here (offline); the message names the file to place."""


class ParityError(UserError):
    """The exported model computes something else than the run: its file is kept for a look, and logged nowhere."""
