"""The installed distribution's version, looked up once and importable without the package's API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-unet-gradcam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
