"""emu35-robot: plans with key-frame images from Emu3.5, served over gRPC. This package is the SDK surface."""

__version__ = "0.1.0"
