"""Errors caused by the user's recipe, input or arguments.

The CLI prints these as one line (no traceback) and exits with status 2.
"""


class UserError(Exception):
    """Bad recipe, input or arguments: the message says which key, file or row."""


class RecipeError(UserError):
    pass


class InputError(UserError):
    pass
