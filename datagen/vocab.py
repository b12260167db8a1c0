"""One shared vocabulary per dataset: a tuple of token strings with named, half-open id ranges."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [start, stop)

    @staticmethod
    def build(groups: list[tuple[str, list[str]]]) -> "Vocab":
        """Concatenate named groups of tokens; "specials" should come first so <pad> is id 0."""
        tokens, ranges = [], {}
        for name, group in groups:
            ranges[name] = (len(tokens), len(tokens) + len(group))
            tokens.extend(group)
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        return Vocab(tuple(tokens), ranges)

    def __len__(self) -> int:
        return len(self.tokens)

    def range(self, name: str) -> range:
        if name not in self.ranges:
            raise KeyError(f"vocabulary has no range {name!r}; it has {sorted(self.ranges)}")
        return range(*self.ranges[name])

    def id(self, token: str) -> int:
        return self._index[token]

    def token(self, i: int) -> str:
        return self.tokens[i]

    @property
    def pad_id(self) -> int:
        return self.id("<pad>")

    @property
    def _index(self) -> dict[str, int]:
        # Cached lazily on the frozen instance: token -> id lookups are hot in format conversion.
        if "_idx" not in self.__dict__:
            object.__setattr__(self, "_idx", {t: i for i, t in enumerate(self.tokens)})
        return self.__dict__["_idx"]

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "ranges": {k: list(v) for k, v in self.ranges.items()}}

    @staticmethod
    def from_dict(d: dict) -> "Vocab":
        return Vocab(tuple(d["tokens"]), {k: tuple(v) for k, v in d["ranges"].items()})
