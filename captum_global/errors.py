"""The errors captum_global raises, in one public place.

A wrong argument raises :class:`InvalidArgumentError`. It is a
``ValueError`` (what Python code expects for a bad value) and also an
``AssertionError`` (what Captum raises for a bad target or baseline), so
code written against either convention, Captum's own generic tests
included, catches it. A wrong *type* raises
:class:`InvalidArgumentTypeError`, which is additionally a ``TypeError``.

A model that returns NaN or infinity while a method runs raises
:class:`NonFiniteOutputError`: a method never turns such an output into a
silent zero map, which would read as "no evidence".

Examples::

    >>> from captum_global.errors import InvalidArgumentError
    >>> issubclass(InvalidArgumentError, ValueError), issubclass(InvalidArgumentError, AssertionError)
    (True, True)
"""

__all__ = ["InvalidArgumentError", "InvalidArgumentTypeError", "NonFiniteOutputError"]


class InvalidArgumentError(ValueError, AssertionError):
    """An argument has a value the method cannot use; the message names the argument."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has a type the method cannot use; the message names the argument."""


class NonFiniteOutputError(FloatingPointError):
    """The model returned NaN or infinity during a run; the message says for which input and step."""
