class CliError(Exception):
    """A failure reported to the user as one line on stderr, never a traceback."""
