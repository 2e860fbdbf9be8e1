"""AUTOMATIC1111's prompt-weighting syntax, the one most SDXL prompts on the web are written in.

``(word)`` multiplies attention to ``word`` by 1.1, ``((word))`` by 1.21, ``[word]`` divides by
1.1, ``(word:1.5)`` sets 1.5; ``\\(`` and ``\\)`` are literal brackets; ``BREAK`` starts a new
75-token chunk. The result is a list of (text, weight) fragments.
"""

from __future__ import annotations

import re

UP, DOWN = 1.1, 1 / 1.1
BREAK = "BREAK"
_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]        # escaped bracket or backslash
    | \(|\[             # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)   # ':1.3)' closes a weighted group
    | \)|\]             # closing brackets
    | \bBREAK\b         # chunk break
    | [^\\()\[\]:B]+    # plain text
    | .                 # anything else (a lone ':' or 'B')
    """,
    re.VERBOSE,
)


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """Split ``prompt`` into (text, weight) fragments; ``(BREAK, -1)`` marks a chunk break."""
    fragments: list[list] = []
    open_round: list[int] = []  # fragment index where each '(' group starts
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[1] >= 0:  # BREAK markers keep their -1
                fragment[1] *= factor

    for match in _TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(fragments))
        elif token == "[":
            open_square.append(len(fragments))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), UP)
        elif token == "]" and open_square:
            scale(open_square.pop(), DOWN)
        elif token == BREAK:
            fragments.append([BREAK, -1.0])
        else:
            fragments.append([token, 1.0])
    for start in open_round:  # unclosed brackets still count, as in A1111
        scale(start, UP)
    for start in open_square:
        scale(start, DOWN)
    return _merge([(text, w) for text, w in fragments if text])


def _merge(fragments: list[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in fragments:
        if merged and merged[-1][1] == weight and weight != -1.0:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]
