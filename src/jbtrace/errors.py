"""The one exception a user can cause; the CLI turns it into one line on stderr and exit 2."""


class UserError(Exception):
    """Bad input from the user: a file, an option, a model spec. The message is the whole story."""
