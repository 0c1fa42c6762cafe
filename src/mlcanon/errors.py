"""The one exception class the CLI catches: a problem with what the user asked for, not a bug."""


class UserError(Exception):
    """Bad input (unknown name, bad flag value, missing data, wrong env spaces).

    The message names the problem and the fix; the CLI prints it on one line and exits non-zero.
    Internal bugs are *not* UserErrors and keep their traceback.
    """
