class MABertError(ValueError):
    """A user-facing error: one line saying what was wrong and what to do."""
