"""queuectl: run commands in the background from a Redis queue."""

__version__ = "1.0.0"
