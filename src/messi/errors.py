"""The one exception type users see from messi."""


class MessiError(ValueError):
    """Bad input or a broken file, with a message that names the problem and the fix.

    The command line prints the message on one line and exits with code 2; library users can
    catch it (it is a ``ValueError``).
    """
