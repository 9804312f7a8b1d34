"""Schema checks both configuration readers share: missing or unknown keys and wrong types, each error
naming the file, the key and what was expected."""

from pathlib import Path
from typing import Any

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
