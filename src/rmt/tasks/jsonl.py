"""Reading JSON-lines files with errors that say which file, which line and what is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_jsonl(
    path: str | Path,
    required: tuple[str, ...],
    expected_format: str,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> list[dict[str, Any]]:
    """Parse `path` as one JSON object per line, each holding at least the `required` fields.

    `expected_format` is a one-line example of a valid record, quoted in every error so the fix is obvious.
    `check`, if given, inspects each record and returns a description of what is wrong with it, or None.
    Blank lines are skipped (line numbers in errors still count them).

    Raises:
        FileNotFoundError: the file does not exist (or is a folder).
        ValueError: a line is not valid UTF-8 or JSON, not an object, lacks a required field or fails `check`.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a folder; expected a JSON-lines file, one object per line like "
                                f"{expected_format}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; expected JSON lines, one object per line like {expected_format}"
        )
    records = []
    with path.open("rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid UTF-8 ({error.reason} at byte "
                                 f"{error.start} of the line); expected an object like {expected_format}") from None
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}: bad JSON ({error.msg}); expected an object like {expected_format}"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where}: expected a JSON object like {expected_format}, got {type(record).__name__}"
                )
            missing = [name for name in required if name not in record]
            if missing:
                raise ValueError(f"{where}: missing field {missing[0]!r}; expected an object like {expected_format}")
            problem = check(record) if check else None
            if problem:
                raise ValueError(f"{where}: {problem}; expected an object like {expected_format}")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no records (the file is empty or blank); expected JSON lines, one object per "
                         f"line like {expected_format}")
    return records
