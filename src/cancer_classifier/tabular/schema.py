"""Check a table against its declared columns: one validator for ingestion (whole files) and the API
(request rows), so both accept and refuse exactly the same values.

Rows are reported by position (0-based here; callers add their own offset for display).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cancer_classifier.entity.tabular import ColumnSpec

SHOWN_ROWS = 10


@dataclass(frozen=True)
class Violation:
    column: str
    problem: str  # what is wrong, with the expectation: "above the maximum 50"
    rows: tuple[int, ...]

    def describe(self, first_row: int = 1) -> str:
        shown = ", ".join(str(row + first_row) for row in self.rows[:SHOWN_ROWS])
        more = f" and {len(self.rows) - SHOWN_ROWS} more" if len(self.rows) > SHOWN_ROWS else ""
        return f"column '{self.column}': {self.problem} in {len(self.rows)} row(s): {shown}{more}"

    def as_dict(self) -> dict:
        return {"column": self.column, "problem": self.problem, "count": len(self.rows), "rows": list(self.rows[:100])}


def _rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def _numeric_problems(values: pd.Series, spec: ColumnSpec, present: np.ndarray) -> list[tuple[str, np.ndarray]]:
    is_bool = values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)
    number = pd.to_numeric(values.where(~is_bool), errors="coerce").to_numpy(float)
    not_number = present & (~np.isfinite(number) | is_bool)
    ok = present & ~not_number
    problems = [("not a number", not_number)]
    if spec.type == "integer":
        problems.append(("not a whole number", ok & (np.mod(np.where(ok, number, 0), 1) != 0)))
    problems += [
        (f"below the minimum {spec.minimum:g}", ok & (np.where(ok, number, spec.minimum) < spec.minimum)),
        (f"above the maximum {spec.maximum:g}", ok & (np.where(ok, number, spec.maximum) > spec.maximum)),
    ]
    return problems


def column_violations(values: pd.Series, spec: ColumnSpec) -> list[Violation]:
    """Missing, mistyped, out-of-range or unknown values of one column."""
    missing = values.isna().to_numpy(bool)
    if spec.numeric:
        problems = _numeric_problems(values, spec, ~missing)
    else:
        allowed = set(spec.categories)
        unknown = ~missing & ~values.map(lambda v: isinstance(v, str) and v in allowed).to_numpy(bool)
        problems = [(f"not one of {list(spec.categories)}", unknown)]
    found = [("missing", missing), *problems]
    return [Violation(spec.name, problem, _rows(mask)) for problem, mask in found if mask.any()]


def table_violations(frame: pd.DataFrame, columns: tuple[ColumnSpec, ...]) -> list[Violation]:
    return [violation for spec in columns for violation in column_violations(frame[spec.name], spec)]


def typed(frame: pd.DataFrame, columns: tuple[ColumnSpec, ...]) -> pd.DataFrame:
    """The declared columns, in order, as float (numbers) or str (categories): what the model takes."""
    return pd.DataFrame(
        {spec.name: frame[spec.name].astype(float if spec.numeric else str) for spec in columns}, index=frame.index
    )
