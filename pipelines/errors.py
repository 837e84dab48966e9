"""Errors caused by the user's recipe, input or arguments.

The CLI prints these without a traceback (one line per problem) and exits with status 2.
"""

import difflib


class UserError(Exception):
    """Bad recipe, input or arguments: the message says which key, file or row."""


class RecipeError(UserError):
    pass


class InputError(UserError):
    pass


def did_you_mean(word, known) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to a mistyped one, else
    ``""``: a typo is fixed from the message, without reading the list of every name."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
