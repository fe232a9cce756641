"""hifikit: a HIFI-enabled llama.cpp and a lab to measure GGUF quantization."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hifikit")
except PackageNotFoundError:  # running from a source checkout
    __version__ = "0.0.0+source"
