"""The validators every options object uses: one definition of each check.

Each raises one OptionsError naming the config field, the bad value and the fix.
"""
from typing import Any, Tuple

from mixsiam_jax.errors import UserError


class OptionsError(UserError):
  """A config value is invalid; the message names the field and the fix."""


def is_number(value: Any) -> bool:
  """True for an int or float that is not a bool (config values come from JSON and flags)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(field: str, value: Any, alternative: str = "") -> None:
  """Refuses anything but a positive int (bools too), naming ``field`` (and ``alternative``)."""
  if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
    raise OptionsError(f"{field}={value!r} must be a positive integer"
                       + (f", or {alternative}." if alternative else "."))


def non_negative_int(field: str, value: Any, meaning_of_zero: str = "") -> None:
  """Refuses anything but an int >= 0, naming ``field`` (and what 0 means, if given)."""
  if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
    raise OptionsError(f"{field}={value!r} must be an integer >= 0"
                       + (f" (0: {meaning_of_zero})." if meaning_of_zero else "."))


def positive_number(field: str, value: Any) -> None:
  """Refuses anything but a number > 0, naming ``field``."""
  if not (is_number(value) and value > 0):
    raise OptionsError(f"{field}={value!r} must be a positive number.")


def non_negative_number(field: str, value: Any) -> None:
  """Refuses anything but a number >= 0, naming ``field``."""
  if not (is_number(value) and value >= 0):
    raise OptionsError(f"{field}={value!r} must be >= 0.")


def unit_interval(field: str, value: Any) -> None:
  """Refuses anything but a number in [0, 1], naming ``field``."""
  if not (is_number(value) and 0.0 <= value <= 1.0):
    raise OptionsError(f"{field}={value!r} must lie in [0, 1].")


def boolean(field: str, value: Any) -> None:
  """Refuses anything but True or False, naming ``field``."""
  if not isinstance(value, bool):
    raise OptionsError(f"{field}={value!r} must be true or false.")


def one_of(field: str, value: Any, choices: Tuple[Any, ...]) -> None:
  """Refuses a value outside ``choices``, naming ``field`` and the choices."""
  if value not in choices:
    raise OptionsError(f"{field}={value!r} must be one of {choices}.")


# num_train_steps that derives the run's length from num_epochs.
STEPS_FROM_EPOCHS = -1


def check_duration(num_train_steps: int, num_epochs: float) -> None:
  """Checks a run's length: a positive num_train_steps, or -1 and a positive num_epochs.

  Args:
    num_train_steps: steps, or STEPS_FROM_EPOCHS (-1) to derive them from num_epochs.
    num_epochs: epochs of the training set (used when num_train_steps is -1).

  Raises:
    OptionsError: naming the bad value (0 and other negative step counts too:
      they would silently mean "from epochs").
  """
  if isinstance(num_train_steps, bool) or not isinstance(num_train_steps, int) or not (
      num_train_steps > 0 or num_train_steps == STEPS_FROM_EPOCHS):
    raise OptionsError(f"num_train_steps={num_train_steps!r} must be -1 (derive it from "
                       "num_epochs) or a positive number of steps.")
  if num_train_steps == STEPS_FROM_EPOCHS and not (is_number(num_epochs) and num_epochs > 0):
    raise OptionsError(f"num_epochs={num_epochs!r} must be a positive number when "
                       "num_train_steps=-1 (the length comes from it); or set num_train_steps "
                       "to a positive number of steps.")
