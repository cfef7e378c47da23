"""Reading a TOML table strictly: typed getters that name the dotted key on error.

Every key read is ticked off; :meth:`Table.finish` rejects whatever is left,
so an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "Table", "show"]


class ConfigError(Exception):
    """A bad configuration value; ``str()`` is the one line shown to the operator."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Table:
    """A TOML table being consumed: every key read is ticked off, the rest are unknown."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._data[name]

    def table(self, name: str) -> Table:
        value = self._data.get(name, {})
        self._seen.add(name)
        if not isinstance(value, dict):
            raise ConfigError(self.key(name), f"expected a table, got {show(value)}")
        return Table(value, self.key(name))

    def finish(self) -> None:
        for name in self._data:
            if name not in self._seen:
                shown = name if name and name.isprintable() else repr(name)  # one line, always
                raise ConfigError(self.key(shown), "unknown key")

    def string(self, name: str, default: str, *, nonempty: bool = True) -> str:
        if not self.has(name):
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"expected a string, got {show(value)}")
        if nonempty and not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if not self.has(name):
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {show(value)}")
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        positive: bool = False,
    ) -> float:
        if not self.has(name):
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"expected a number, got {show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(self.key(name), f"expected a finite number, got {show(value)}")
        if positive and number <= 0:
            raise ConfigError(self.key(name), f"must be greater than 0, got {show(value)}")
        if minimum is not None and number < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum:g}, got {show(value)}")
        return number

    def integer(self, name: str, default: int, *, minimum: int = 1, maximum: int) -> int:
        if not self.has(name):
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected a whole number, got {show(value)}")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise ConfigError(self.key(name), f"must be at most {maximum}, got {show(value)}")
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in options:
            allowed = ", ".join(f'"{o}"' for o in options)
            raise ConfigError(self.key(name), f"expected one of {allowed}, got {show(value)}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        if not self.has(name):
            return ()
        value = self.raw(name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.key(name), f"expected a list of strings, got {show(value)}")
        if len(set(value)) != len(value):
            raise ConfigError(self.key(name), "lists the same entry twice")
        return tuple(value)


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
