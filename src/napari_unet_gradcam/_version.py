"""The installed version, in a module of its own so core modules can read it without importing torch."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-unet-gradcam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
