"""The one error type of data preparation and loading, shared by its modules."""


class DataError(ValueError):
    """Input text or a prepared-data directory that cannot be used. The message is one
    line, names the file at fault and is meant to be shown to the user as it is."""
