"""String options as enums: each option's choices are listed once and checked once, where a value enters
the library, with an error that names the option and its choices."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A string option whose members equal (and print as) their values, so configs, JSON and file headers
    keep plain strings."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls: type[C], value: str | C, option: str) -> C:
        """`value` as a member; `option` (e.g. ``"prior.kind"``) names it in the error."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"{option} must be one of {choices}; got {value!r}") from None
