"""The one exception type for mistakes a user can fix (bad flag, missing data, bad file).

Command-line entry points print these as a one-line message and exit with
status 2 instead of a traceback; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem with the user's input: the message says what to change."""
