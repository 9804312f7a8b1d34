"""Checks both configuration readers share, each error naming the file, the key and what was expected:
the schema (missing or unknown keys, wrong types), then the values (``check_values`` with a table of
``Check`` rules such as ``at_least(1)``, ``one_of(...)``, ``POSITIVE`` or ``FRACTION``)."""

from collections.abc import Callable, Collection
from functools import reduce
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from cancer_classifier.core.errors import ConfigError

PROMOTION_METRICS = ("roc_auc", "accuracy", "f1", "sensitivity", "specificity", "jaccard")
NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _type_names(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_schema(values: Any, schema: dict[str, Any], file: Path, prefix: str = "") -> None:
    where = f"{file}: '{prefix.rstrip('.')}'" if prefix else f"{file}"
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping with keys {sorted(schema)}")
    missing = sorted(set(schema) - set(values))
    unknown = sorted(set(values) - set(schema))
    if missing:
        raise ConfigError(f"{file}: missing key(s) {[prefix + k for k in missing]}")
    if unknown:
        raise ConfigError(
            f"{file}: unknown key(s) {[prefix + k for k in unknown]}; "
            f"expected only {sorted(prefix + k for k in schema)}"
        )
    for key, expected in schema.items():
        value = values[key]
        if isinstance(expected, dict):
            check_schema(value, expected, file, f"{prefix}{key}.")
        # bool is an int subclass: true must not pass as a number, nor 1 as a flag.
        elif isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ConfigError(
                f"{file}: '{prefix}{key}' must be {_type_names(expected)}, got {value!r} ({type(value).__name__})"
            )


# -- values the schema cannot express --------------------------------------------------------


class Check(NamedTuple):
    """One rule for a value: ``ok(value)`` is true when it is good; ``expected`` ends "must be ..."."""

    ok: Callable[[Any], bool]
    expected: str


def fail(file: Path, key: str, expected: str, value: Any) -> NoReturn:
    raise ConfigError(f"{file}: '{key}' must be {expected}, got {value!r}")


def check_values(file: Path, values: dict, checks: dict[str, Check], prefix: str = "") -> None:
    """Apply each check to its value (a dotted key into ``values``), in order; the first failure is the error.

    ``prefix`` is where ``values`` sits in ``file`` (``"serving."``), so the error names the whole key.
    """
    for key, (ok, expected) in checks.items():
        value = reduce(lambda section, part: section[part], key.split("."), values)
        if not ok(value):
            fail(file, prefix + key, expected, value)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which YAML's true would otherwise pass as)."""
    return isinstance(value, NUMBER) and not isinstance(value, bool)


def at_least(low: float) -> Check:
    return Check(lambda value: value >= low, f"at least {low}")


def between(low: float, high: float) -> Check:
    return Check(lambda value: low <= value <= high, f"between {low} and {high}")


def one_of(choices: Collection, expected: str | None = None) -> Check:
    return Check(lambda value: value in choices, expected or f"one of {choices}")


POSITIVE = Check(lambda value: value > 0, "a positive number")
FRACTION = Check(lambda value: 0 <= value < 1, "in [0, 1)")  # 0 allowed: a dropout or a margin of none
OPEN_FRACTION = Check(lambda value: 0 < value < 1, "a fraction in (0, 1)")
