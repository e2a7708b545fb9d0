"""The one exception class that marks bad user input across the package.

Loaders and readers raise subclasses of [`BadInputError`] when a file, a row or an option the user
gave cannot be used as it is; the `carrot` command turns any of them into a one-line error and
exit code 2 (a usage error), whichever subcommand met it.
"""


class BadInputError(ValueError):
    """Input the user gave (a file, a line, a row, an option) that cannot be used as it is."""
