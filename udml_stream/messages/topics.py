"""Topic names of a fleet: each robot's streams live under its name (``<robot>/camera``)."""

from __future__ import annotations

from collections.abc import Sequence


def namespaced(robot: str, name: str) -> str:
    """``<robot>/<name>``, or ``name`` itself for the unnamed single robot."""
    return f"{robot}/{name}" if robot else name


def check_robot_names(robots: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first robot name that cannot prefix a topic."""
    seen: set[str] = set()
    for r in robots:
        if not r or "/" in r or r != r.strip() or any(c in r for c in "*?[]"):
            raise ValueError(f"robot name {r!r}: expected a non-empty name without '/', "
                             "spaces at its ends or pattern characters")
        if r in seen:
            raise ValueError(f"robot name {r!r} is listed twice")
        seen.add(r)
