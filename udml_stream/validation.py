"""One way to turn a pydantic ``ValidationError`` into the project's config error message."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(err: ValidationError, source: str) -> str:
    """``source: dotted.key = value: what was expected``, one line per problem."""
    return "\n".join(
        f"{source}: {'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}"
        for e in err.errors())
