"""Named extension points: dataset readers, classifiers, generator families; one :class:`Registry` each.

An entry is registered next to its code, with its own metadata (help text, licence, training preset, loader).
Whatever lists or checks names (CLI help, config validation, error messages, the report) reads the registry, so
adding an entry touches one file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from dermsynth.errors import DermsynthError

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries by name, in registration order (the order help texts and errors list them in)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what a name names, in messages: "dataset", "classifier", "model family"
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> Entry:
        # Two entries under one name is a programming error: the later one would silently win.
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests register toy entries and take them out again)."""
        del self._entries[name]

    def get(self, name: str, where: str | None = None) -> Entry:
        """The entry of ``name``; an unknown name is a user mistake: one line listing the known names."""
        if name not in self._entries:
            raise DermsynthError(self.unknown(name, where))
        return self._entries[name]

    def find(self, name: str) -> Entry | None:
        """The entry of ``name``, or None (for callers with a fallback, e.g. a checkpoint path)."""
        return self._entries.get(name)

    def unknown(self, name: object, where: str | None = None) -> str:
        prefix = f"{where}: " if where else ""
        return f"{prefix}unknown {self.kind} {name!r}; known: {', '.join(self._entries)}"

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def __getitem__(self, name: str) -> Entry:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def one_of(names: list[str]) -> str:
    """``'a', 'b' or 'c'``: how pydantic lists the choices of a Literal, for validators that check a registry."""
    quoted = [repr(name) for name in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]]) if len(quoted) > 1 else "".join(quoted)
