"""The ``queuectl`` admin CLI."""
