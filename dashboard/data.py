"""The dashboard's data layer: what `dvc exp show --json` and `dvc plots diff --json` say, as
pandas DataFrames and image paths. Pure parsers; no widgets, no torch, no diffusers.

Columns of the experiments frame: `id`, `name`, `kind` (workspace, baseline, experiment),
`state` (an ExperimentState: workspace, success, failed, queued, running, lost), `created`,
`parent` (the baseline's id), `error`, `pid` (the process of a running queue task), then one
column per param (`train_lora.rank`), per metric (`lift`, or `train_classifier/step` where two
metrics files share a name) and per dependency (`dep:stages/train_lora.py`, its hash).
`frame.attrs` lists which columns are which.
"""

from __future__ import annotations

import ast
import difflib
import enum
import functools
import json
import keyword
import operator
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd


class ExperimentState(enum.StrEnum):
    """The state of a table row: an executor's state in `dvc exp show --json`, else success or
    failed; `lost` is this module's (mark_lost). A str, so it compares with what DVC writes."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    LOST = "lost"  # DVC says running, but its process is gone without a result
    WORKSPACE = "workspace"


S = ExperimentState


FIXED_COLUMNS = ["id", "name", "kind", "state", "created", "parent", "error", "pid", "root"]
DEP_PREFIX = "dep:"
# check_params' deps: params.yaml as a file (its params are columns already) and the constant
# stamp every stage depends on; neither says anything a person compares.
HIDDEN_DEPS = {DEP_PREFIX + "params.yaml", DEP_PREFIX + "outputs/params_checked.txt"}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': [1, 2]} -> {'a.b': 1, 'c': [1, 2]}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _file_data(files: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{path: flattened data} of a params or metrics section; files that failed to load are
    left out (the row's error says why)."""
    return {
        path: flatten(content.get("data") or {})
        for path, content in (files or {}).items()
        if isinstance(content, Mapping)
    }


def _metric_names(revisions: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """Column names of metrics: the bare key where it is unique across metrics files, else
    `<folder of the file>/<key>` (both train_lora and train_classifier log a `step`)."""
    files_by_key: dict[str, set[str]] = {}
    for data in revisions:
        for path, values in _file_data(data.get("metrics")).items():
            for key in values:
                files_by_key.setdefault(key, set()).add(path)
    names = {}
    for key, files in files_by_key.items():
        for path in files:
            folder = PurePosixPath(path).parent.name
            names[(path, key)] = key if len(files) == 1 else f"{folder}/{key}"
    return names


def _error_text(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, Mapping):
        return str(error.get("msg") or error.get("type") or error)
    return str(error)


def _state(kind: str, executor: Mapping[str, Any] | None, error: str | None) -> str:
    if executor and executor.get("state"):
        state = str(executor["state"])
        return S(state) if state in S._value2member_map_ else state  # a newer DVC's, as it is
    if kind == "workspace":
        return S.WORKSPACE
    return S.FAILED if error else S.SUCCESS


def _row(entry: Mapping[str, Any], kind: str, parent: str | None, executor, names) -> dict:
    data = entry.get("data") or {}
    error = _error_text(entry.get("error"))
    row: dict[str, Any] = {
        "id": entry["rev"],
        "name": entry.get("name") or (entry["rev"] if kind == "workspace" else entry["rev"][:7]),
        "kind": kind,
        "state": _state(kind, executor, error),
        "created": data.get("timestamp"),
        "parent": parent,
        "error": error,
        "pid": ((executor or {}).get("local") or {}).get("pid"),  # of a running queue task
        "root": ((executor or {}).get("local") or {}).get("root"),  # its workspace, while running
    }
    for values in _file_data(data.get("params")).values():
        row.update(values)
    if row["state"] != S.FAILED:  # a failed queue task lists its baseline's metrics: not its own
        for path, values in _file_data(data.get("metrics")).items():
            row.update({names[(path, key)]: value for key, value in values.items()})
    for path, dep in (data.get("deps") or {}).items():
        row[DEP_PREFIX + path] = (dep or {}).get("hash")
    return row


# When one name is listed twice under a baseline, the entry that keeps it: a finished run over
# a running one over a queued one.
_STATE_RANK = {S.QUEUED: 0, S.RUNNING: 1}


def _experiments(commit: Mapping[str, Any]) -> list[tuple[dict, Any]]:
    """(first revision, executor) of each experiment of one baseline, one per name. For a moment
    after a queue task ends DVC lists it twice: still running (its queue entry) and finished
    (its new ref); the finished one is the experiment."""
    kept: dict[Any, tuple[dict, Any]] = {}
    for experiment in commit.get("experiments") or []:
        # One row per experiment: its first revision. A running queue task lists a second,
        # unnamed one (the executor's work in progress), which is not an experiment.
        revisions = experiment.get("revs") or []
        if not revisions:
            continue
        revision = dict(revisions[0])
        revision.setdefault("name", experiment.get("name"))
        executor = experiment.get("executor")
        key = revision["name"] or revision["rev"]
        state = (executor or {}).get("state")
        if key in kept:
            other = (kept[key][1] or {}).get("state")
            if _STATE_RANK.get(state, 2) < _STATE_RANK.get(other, 2):
                continue
        kept[key] = (revision, executor)
    return list(kept.values())


def _entries(exp_show: list[Mapping[str, Any]]):
    """(entry, kind, parent id, executor) for every row: baselines, then their experiments."""
    for commit in exp_show:
        kind = "workspace" if commit["rev"] == "workspace" else "baseline"
        yield commit, kind, None, None
        for revision, executor in _experiments(commit):
            yield revision, "experiment", commit["rev"], executor


def experiments_frame(exp_show: list[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per workspace, baseline commit and experiment of `dvc exp show --json`."""
    entries = list(_entries(exp_show))
    names = _metric_names(entry.get("data") or {} for entry, *_ in entries)
    rows = [
        _row(entry, kind, parent, executor, names) for entry, kind, parent, executor in entries
    ]
    frame = pd.DataFrame(rows)
    if "created" in frame:
        frame["created"] = pd.to_datetime(frame["created"], errors="coerce")
    for column in FIXED_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    params = sorted(
        {
            key
            for entry, *_ in entries
            for values in _file_data((entry.get("data") or {}).get("params")).values()
            for key in values
        }
    )
    metrics = sorted(set(names.values()))
    deps = sorted(c for c in frame.columns if c.startswith(DEP_PREFIX) and c not in HIDDEN_DEPS)
    frame = frame[FIXED_COLUMNS + params + metrics + deps]
    frame.attrs.update(params=params, metrics=metrics, deps=deps)
    return frame


def curve_points(plots_diff: Mapping[str, Any], path: str) -> pd.DataFrame:
    """The points of one line plot of `dvc plots diff --json`: rev, step, value (numbers: DVC
    hands values read from CSV or TSV back as strings)."""
    entries = (plots_diff.get("data") or {}).get(path) or []
    rows = []
    for entry in entries:
        if entry.get("type") != "vega":
            continue
        values = ((entry.get("content") or {}).get("data") or {}).get("values") or []
        for point in values:
            fields = [k for k in point if k not in ("rev", "step", "filename", "field")]
            if "step" not in point or not fields:
                continue
            rows.append(
                {"rev": point.get("rev"), "step": point["step"], "value": point[fields[0]]}
            )
    frame = pd.DataFrame(rows, columns=["rev", "step", "value"])
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame.dropna(subset=["step", "value"]).sort_values(["rev", "step"], kind="stable")


def image_files(plots_diff: Mapping[str, Any], prefix: str = "") -> dict[tuple[str, str], str]:
    """{(rev, image path in the repository): file that `dvc plots diff -o` wrote} for the
    image plots under `prefix`."""
    found = {}
    for path, entries in (plots_diff.get("data") or {}).items():
        if not path.startswith(prefix):
            continue
        for entry in entries:
            if entry.get("type") == "image" and entry.get("url"):
                for rev in entry.get("revisions") or []:
                    found[(rev, path)] = entry["url"]
    return found


class FilterError(ValueError):
    """A filter expression that cannot be applied; the message says why."""


FILTER_GRAMMAR = (
    "a filter compares columns with values: column names as the table shows them, numbers, "
    "'text', True, False, None; == != < <= > >= (chained too: 0.1 < lift < 0.5); and, or, not "
    '(& | ~); in and not in a list: name in ["rank-8", "rank-16"]; + - * / // % **; '
    'column.str.contains("text"), .str.startswith("text"), .str.endswith("text")'
)
MAX_FILTER_LENGTH = 5000  # characters; a filter is typed, and parsing costs with its length
STRING_TESTS = {  # the string methods a filter may call, as `column.str.<name>("text")`
    "contains": lambda value, text: text in value,
    "startswith": str.startswith,
    "endswith": str.endswith,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_NOT_ALLOWED = {  # how the error names what it refused
    ast.Call: "calls",
    ast.Attribute: "attributes",
    ast.Subscript: "subscripts ([...])",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignments (:=)",
    ast.JoinedStr: "f-strings",
    ast.IfExp: "if/else",
    ast.Dict: "dictionaries",
    ast.Set: "sets",
    ast.Starred: "*",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}
_SCALARS = (bool, int, float, str, type(None))


def _placeholders(text: str, columns: list[str]) -> tuple[str, dict[str, str]]:
    """`text` with every column name replaced by a Python name of its own (column names hold
    dots, slashes and colons: `train_lora.rank`, `dep:stages/x.py`), outside string literals;
    `` `name` `` quotes a name as in pandas, and `&` and `|` read as `and` and `or` (pandas'
    precedence). Returns the text and {placeholder: column}."""
    prefix = "_c"
    while prefix in text:
        prefix += "_"
    by_name: dict[str, str] = {}

    def placeholder(column: str) -> str:
        return by_name.setdefault(column, f"{prefix}{len(by_name)}_")

    # Python's keywords stay keywords: a column named like one is written in backquotes
    names = sorted((c for c in columns if not keyword.iskeyword(c)), key=len, reverse=True)
    pattern = re.compile(
        rf"(?<![\w.`/:])({'|'.join(map(re.escape, names))})(?![\w`/]|\.(?!str\.))"
        if names
        else r"(?!)"
    )
    parts, code, i = [], [], 0

    def flush() -> None:
        segment = pattern.sub(lambda m: placeholder(m[1]), "".join(code))
        parts.append(segment.replace("&", " and ").replace("|", " or "))
        code.clear()

    while i < len(text):
        char = text[i]
        if char in "'\"":  # a string literal, escapes included, kept as it is
            end = i + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            flush()
            parts.append(text[i : end + 1])
            i = end + 1
        elif char == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise FilterError("a ` quote is not closed")
            name = text[i + 1 : end]
            if name not in columns:
                raise FilterError(_unknown(name, columns))
            flush()
            parts.append(f" {placeholder(name)} ")
            i = end + 1
        else:
            code.append(char)
            i += 1
    flush()
    return "".join(parts).strip(), {p: column for column, p in by_name.items()}


def _unknown(name: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(name, columns, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"there is no column {name!r}{hint}"


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` of a chain of plain names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (inner := _dotted(node.value)) is not None:
        return f"{inner}.{node.attr}"
    return None


class _Filter:
    """Evaluates the parsed filter: only the nodes of FILTER_GRAMMAR, on pandas Series of
    the frame's columns (vectorised); any other node raises FilterError and runs nothing."""

    def __init__(self, frame: pd.DataFrame, columns: dict[str, str]):
        self.frame, self.columns = frame, columns

    def show(self, node: ast.AST) -> str:
        """The text of `node` with column names as the person wrote them."""
        text = ast.unparse(node)
        for placeholder in sorted(self.columns, key=len, reverse=True):
            text = text.replace(placeholder, self.columns[placeholder])
        return text

    def refuse(self, node: ast.AST) -> FilterError:
        what = _NOT_ALLOWED.get(type(node), type(node).__name__)
        return FilterError(f"{what} are not allowed in a filter; {FILTER_GRAMMAR}")

    def value(self, node: ast.AST) -> Any:
        """A Series or a scalar."""
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, _SCALARS):
                raise FilterError(
                    f"{node.value!r} is not a value a filter takes; {FILTER_GRAMMAR}"
                )
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.columns:
                return self.frame[self.columns[node.id]]
            raise FilterError(_unknown(node.id, list(self.frame.columns)))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BoolOp):
            values = [self.condition(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            return functools.reduce(combine, values)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not | ast.Invert):
                value = self.condition(node.operand)
                return ~value if isinstance(value, pd.Series) else not value
            value = self.number(node.operand)
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = self.number(node.left), self.number(node.right)
            if isinstance(node.op, ast.Pow) and _huge_power(left, right):
                raise FilterError("that power is too large")
            return _ARITHMETIC[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            return self.string_test(node)
        if isinstance(node, ast.Attribute):  # a dotted name that is no column: say so
            name = _dotted(node)
            if name and "__" not in name and name.split(".")[0] not in self.columns:
                raise FilterError(_unknown(name, list(self.frame.columns)))
        if isinstance(node, ast.List | ast.Tuple):
            raise FilterError(f"a list of values goes after `in` or `==`; {FILTER_GRAMMAR}")
        raise self.refuse(node)

    def condition(self, node: ast.AST) -> pd.Series | bool:
        return _as_condition(self.value(node), self.show(node))

    def number(self, node: ast.AST) -> Any:
        value = self.value(node)
        if isinstance(value, pd.Series):
            if pd.api.types.is_numeric_dtype(value) or pd.api.types.is_bool_dtype(value):
                return value
            if (
                pd.api.types.is_string_dtype(value)
                and value.map(lambda v: isinstance(v, str)).any()
            ):
                raise FilterError(f"{self.show(node)} holds text: arithmetic takes numbers")
            return pd.to_numeric(value, errors="coerce")  # lists and text become empty
        if isinstance(value, bool | int | float):
            return value
        raise FilterError(f"{self.show(node)} is not a number: arithmetic takes numbers")

    def values(self, node: ast.AST) -> list[Any]:
        """The constants of a list or tuple (after `in`)."""
        values = [self.value(element) for element in node.elts]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise FilterError(f"a list after `in` holds values, not columns: {self.show(node)}")
        return values

    def compare(self, node: ast.Compare) -> pd.Series | bool:
        result, left = True, node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            result = result & self.pair(left, op, right)
            left = right
        return result

    def pair(self, left_node: ast.AST, op: ast.cmpop, right_node: ast.AST) -> pd.Series | bool:
        in_list = isinstance(right_node, ast.List | ast.Tuple)
        if isinstance(op, ast.In | ast.NotIn) or (in_list and isinstance(op, ast.Eq | ast.NotEq)):
            if not in_list:
                raise FilterError('`in` takes a list of values: name in ["a", "b"]')
            left, values = self.value(left_node), self.values(right_node)
            found = left.isin(values) if isinstance(left, pd.Series) else left in values
            return ~found if isinstance(op, ast.NotIn | ast.NotEq) else found
        if type(op) not in _COMPARE:
            word = "is not" if isinstance(op, ast.IsNot) else "is"
            raise FilterError(f"`{word}` is not a comparison a filter takes: use == and !=")
        return _COMPARE[type(op)](self.value(left_node), self.value(right_node))

    def string_test(self, node: ast.Call) -> pd.Series:
        """`column.str.contains("text")` and the other STRING_TESTS: a literal test per cell,
        False where the cell holds no text."""
        function = node.func
        if not (
            isinstance(function, ast.Attribute)
            and function.attr in STRING_TESTS
            and isinstance(function.value, ast.Attribute)
            and function.value.attr == "str"
            and len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            raise self.refuse(node)
        column = self.value(function.value.value)
        if not isinstance(column, pd.Series):
            raise FilterError(f".str.{function.attr} applies to a column")
        test, text = STRING_TESTS[function.attr], node.args[0].value
        return column.map(lambda v: isinstance(v, str) and test(v, text)).astype(bool)


def _huge_power(base: Any, exponent: Any) -> bool:
    """Whether `base ** exponent` of Python integers would take ages (9 ** 9 ** 9)."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        return exponent * max(abs(base).bit_length(), 1) > 100_000
    return False


def _as_condition(value: Any, text: str) -> pd.Series | bool:
    """A boolean Series or a bool, else FilterError: it is not a condition."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, pd.Series):
        if pd.api.types.is_bool_dtype(value):
            return value.fillna(False).astype(bool)
        if value.map(lambda v: isinstance(v, bool | np.bool_)).all():
            return value.astype(bool)  # a column of true/false of object dtype
    raise FilterError(f"{text} is not a condition (compare it: {text} > 0)")


def filter_experiments(frame: pd.DataFrame, expression: str) -> pd.DataFrame:
    """Rows matching a filter over column names as the table shows them:
    `train_lora.rank >= 8 and type_fidelity_lora > 0.5`, `state == "failed"`. Names holding
    dots or slashes need no quoting. The expression is parsed, never run: FILTER_GRAMMAR says
    what it may hold. Raises FilterError naming the problem."""
    text = expression.strip()
    if not text:
        return frame
    try:
        if len(text) > MAX_FILTER_LENGTH:
            raise FilterError(f"it is longer than {MAX_FILTER_LENGTH} characters")
        columns = [c for c in frame.columns if isinstance(c, str)]
        code, placeholders = _placeholders(text, columns)
        try:
            tree = ast.parse(code, mode="eval")
        except SyntaxError as error:
            raise FilterError(f"it is not an expression ({error.msg}); {FILTER_GRAMMAR}") from None
        mask = _as_condition(_Filter(frame, placeholders).value(tree.body), text)
    except FilterError as error:
        raise FilterError(f"cannot filter by {expression!r}: {error}") from None
    except (TypeError, ValueError, ArithmeticError) as error:
        raise FilterError(f"cannot filter by {expression!r}: {error}") from None
    except (RecursionError, MemoryError):
        raise FilterError(f"cannot filter by {expression!r}: it is nested too deeply") from None
    if isinstance(mask, bool):
        return frame if mask else frame.iloc[:0]
    return frame[mask]


def differing_columns(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The columns whose values are not the same in every row ("only columns that differ");
    empty cells do not count (a queued or failed experiment has no metrics yet)."""
    differing = []
    for column in columns:
        values = frame[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            values = values[~values.map(is_missing)]
        if _comparable(values).nunique(dropna=True) > 1:
            differing.append(column)
    return differing


def _sort_key(values: pd.Series) -> pd.Series:
    """Numbers by value, anything else by its text; used to sort a column of mixed cells."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() >= values.notna().sum():
        return numbers
    return values.map(lambda v: None if is_missing(v) else _canonical(v))


def sort_frame(frame: pd.DataFrame, column: str | None, descending: bool = False) -> pd.DataFrame:
    """The whole table sorted by one column (a leaderboard across commits); empty cells last."""
    if not column or column not in frame:
        return frame
    return frame.sort_values(
        column, ascending=not descending, key=_sort_key, na_position="last", kind="stable"
    )


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NaT


def format_cell(value: Any) -> str:
    """A cell as the table shows it: 4 significant digits, short hashes, compact lists."""
    if is_missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _canonical(value: Any) -> str:
    """One text per value, whatever pandas made of it (numpy scalars, 4.0 for 4, NaN)."""
    if is_missing(value):
        return "null"
    if hasattr(value, "item") and not isinstance(value, list | dict):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, default=str, sort_keys=True)


def _comparable(values: pd.Series) -> pd.Series:
    """Values that compare equal exactly when the cells hold the same value: numbers as they
    are (fast), anything else as canonical text."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    return values.map(_canonical)


def changed_params(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """{row id: {param: value}} for the params in which an experiment differs from its baseline
    (the workspace is compared with the first baseline, HEAD; queued rows with nothing)."""
    params = frame.attrs.get("params", [])
    ids = frame["id"].tolist()
    position = {rev: i for i, rev in enumerate(ids)}
    baselines = frame.loc[frame["kind"] == "baseline", "id"].tolist()
    head = baselines[0] if baselines else None
    parents = []
    for kind, parent, state in zip(frame["kind"], frame["parent"], frame["state"], strict=True):
        base = head if kind == "workspace" else parent if kind == "experiment" else None
        parents.append(-1 if state == S.QUEUED else position.get(base, -1))
    has_parent = [p >= 0 for p in parents]
    take = [max(p, 0) for p in parents]
    changed: dict[str, dict[str, Any]] = {rev: {} for rev in ids}
    for param in params:
        values = _comparable(frame[param]).to_numpy()
        base = values[take]
        equal = (values == base) | (pd.isna(values) & pd.isna(base))
        for row in (i for i, same in enumerate(equal) if not same and has_parent[i]):
            changed[ids[row]][param] = frame[param].iat[row]
    return changed


LOWER_IS_BETTER = re.compile(r"loss|error|seconds|(^|[/_.])step$|fid$")


def best_rows(frame: pd.DataFrame, metrics: Iterable[str]) -> dict[str, list[str]]:
    """{metric: ids of the rows holding its best value} over the rows given: the highest, or
    the lowest for losses, errors and times. Metrics that are all equal have no best."""
    best = {}
    for metric in metrics:
        values = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else None
        if values is None or values.nunique() < 2:
            continue
        target = values.min() if LOWER_IS_BETTER.search(metric) else values.max()
        best[metric] = frame.loc[values == target, "id"].tolist()
    return best


def to_csv(frame: pd.DataFrame, columns: list[str]) -> str:
    """The rows and columns given as CSV, values as stored (full precision, ISO times)."""
    table = frame[columns].copy()
    for column in columns:
        if table[column].map(lambda v: isinstance(v, list | dict)).any():
            table[column] = table[column].map(lambda v: v if is_missing(v) else format_cell(v))
    return table.to_csv(index=False)


def to_markdown(frame: pd.DataFrame, columns: list[str]) -> str:
    """The rows and columns given as a GitHub Markdown table, cells as the dashboard shows them."""

    def cell(value: Any) -> str:
        return format_cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for values in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def line_plots(plots_diff: Mapping[str, Any]) -> list[str]:
    """Paths of the plots that are curves over steps (dvclive's metrics), in DVC's order."""
    found = []
    for path, entries in (plots_diff.get("data") or {}).items():
        for entry in entries:
            values = ((entry.get("content") or {}).get("data") or {}).get("values") or []
            if entry.get("type") == "vega" and values and "step" in values[0]:
                found.append(path)
                break
    return found


def confusion_matrices(plots_diff: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """{rev: counts, actual classes down and predicted across} of the confusion plots."""
    matrices = {}
    for entries in (plots_diff.get("data") or {}).values():
        for entry in entries:
            values = ((entry.get("content") or {}).get("data") or {}).get("values") or []
            if entry.get("type") != "vega" or not values or "actual" not in values[0]:
                continue
            points = pd.DataFrame(values)
            for rev, group in points.groupby("rev", sort=False):
                matrices[rev] = pd.crosstab(group["actual"], group["predicted"])
    return matrices


GENERATED = re.compile(
    r"(?:^|/)generated/(?P<kind>base|lora)/(?P<prompt>[^/]+)/seed-(?P<seed>\d+)"
)


def generated_images(images: Mapping[tuple[str, str], str]) -> pd.DataFrame:
    """The generated Pokémon among `image_files()`: rev, kind (base or lora), prompt (as the
    folder names it, dashes for spaces), seed, file."""
    rows = []
    for (rev, path), file in images.items():
        match = GENERATED.search(path)
        if match:
            prompt = match["prompt"].replace("-", " ")
            rows.append(
                {
                    "rev": rev,
                    "kind": match["kind"],
                    "prompt": prompt,
                    "seed": int(match["seed"]),
                    "file": file,
                }
            )
    columns = ["rev", "kind", "prompt", "seed", "file"]
    return pd.DataFrame(rows, columns=columns).sort_values(["prompt", "seed", "rev", "kind"])


def mark_lost(frame: pd.DataFrame, alive, exited) -> pd.DataFrame:
    """Rows that DVC calls running but whose process `alive(pid)` says is gone, with no exit
    status recorded by its worker (`exited(id)`), get the state "lost" and an error saying so:
    DVC keeps such a task "Running" for ever when its queue worker was killed, and its result
    is never collected. A run that exited normally stays running while its worker collects the
    results (seconds)."""
    running = frame["state"] == S.RUNNING
    for index in frame.index[running]:
        pid = frame.at[index, "pid"]
        if pid is None or pd.isna(pid) or alive(int(pid)) or exited(frame.at[index, "id"]):
            continue
        frame.at[index, "state"] = S.LOST
        frame.at[index, "error"] = (
            f"its run stopped without a result (process {int(pid)} is gone: the queue worker "
            "was killed or the machine restarted); remove it and queue it again"
        )
    return frame


def vanished(old: pd.DataFrame, new: pd.DataFrame) -> set[tuple[str, str]]:
    """(baseline, name) of the experiments that `old` shows queued or running and `new` does
    not show at all. DVC's `exp show` reads the queue, the running tasks and the finished
    experiments' refs one after another: a run that ends between those reads, while its worker
    fetches its ref, is in none of them (seen with two workers)."""
    active = old[(old["kind"] == "experiment") & old["state"].isin([S.QUEUED, S.RUNNING])]
    shown = new[new["kind"] == "experiment"]
    now = set(zip(shown["parent"], shown["name"], strict=True))
    return set(zip(active["parent"], active["name"], strict=True)) - now


def carry_picks(old: pd.DataFrame, new: pd.DataFrame, picked: list[str]) -> list[str]:
    """`picked` (ids of `old`) as ids of `new`: a queue task's id changes when it ends (from its
    queue entry to its experiment commit), so a picked running experiment stays picked by name
    under the same baseline. Picks that are gone are dropped."""
    ids = set(new["id"])
    experiments = new[new["kind"] == "experiment"]
    keys = zip(experiments["parent"], experiments["name"], strict=True)
    by_name = dict(zip(keys, experiments["id"], strict=True))
    before = dict(zip(old["id"], zip(old["parent"], old["name"], strict=True), strict=True))
    carried = []
    for rev in picked:
        if rev not in ids and rev in before:
            rev = by_name.get(before[rev], rev)
        if rev in ids and rev not in carried:
            carried.append(rev)
    return carried
