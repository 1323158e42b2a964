"""The exception for problems the user can fix in their data or configuration."""


class DataError(ValueError):
    """Bad user data or configuration: the message says what was wrong and what to do."""
