"""Architectures a checkpoint can name, and how each is built (see :mod:`.registry`)."""
