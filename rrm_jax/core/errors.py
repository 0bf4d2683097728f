"""The three kinds of bad input. Each message names the file (or flag), line and field; ``rrm-jax`` prints it as
one line with exit status 2 instead of a traceback. Importing this module is free (no JAX)."""


class ConfigError(ValueError):
    """A config file, recipe or flag names something rrm-jax cannot run; the message names the file and field."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or does not match the config; the message names it."""


class DataError(ValueError):
    """A data file that cannot be read as the format it claims; the message names file:line:field."""
