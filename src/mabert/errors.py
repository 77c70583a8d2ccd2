"""User-facing errors: one line saying what was wrong and what to do."""
from __future__ import annotations

import json


class MABertError(ValueError):
    """A user-facing error: one line saying what was wrong and what to do."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that cleanup (temporary files) runs on the way out."""


def one_line(text: str, limit: int = 400) -> str:
    """Collapse a multi-line message; cut what would drown the cause."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def explain(exc: BaseException) -> str:
    """The cause of an unexpected failure and what to do about it, in one line."""
    if isinstance(exc, MABertError):
        return one_line(str(exc))
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); fix the file"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return one_line(f"{exc.strerror}{where}; check the path, its permissions and free disk space")
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size or use a smaller model"
    detail = one_line(str(exc), 300) or "no message"
    return f"unexpected {type(exc).__name__}: {detail} (rerun with --debug for the traceback)"
