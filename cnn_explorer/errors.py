"""The one exception type for mistakes a user can fix (bad config, missing data, bad checkpoint)."""


class UserError(Exception):
    """A problem the user can act on; the message names the thing and the fix.

    train.py and analyze.py print the message (no traceback) and exit with status 1.
    """
