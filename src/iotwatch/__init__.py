"""iotwatch: packet captures to a trained, tracked, reproducible IoT monitor."""

__version__ = "0.1.0"
