"""Prompt-weighting syntaxes: a prompt string to (text, weight) fragments for the text encoders.

Two syntaxes (``SYNTAXES``), chosen per prompt:

``a1111`` (the default), AUTOMATIC1111's, the one most SDXL prompts on the web are written in:
``(word)`` multiplies attention to ``word`` by 1.1, ``((word))`` by 1.21, ``[word]`` divides by 1.1,
``(word:1.5)`` multiplies by 1.5 (negative numbers too); groups nest by multiplying; ``\\(`` ``\\)``
``\\[`` ``\\]`` ``\\\\`` are literal; an unclosed bracket still weights the rest of the prompt, as in A1111.

``compel``, the syntax of the ``compel`` library and InvokeAI: ``word+`` is 1.1, ``word++`` 1.1²,
``word-`` 0.9, ``word--`` 0.9², and the same after ``(several words)`` or ``"quoted words"``, which
also take a number: ``(several words)1.3`` (``(words)-0.5`` is a negative weight, where compel
reads 0.9 and the text "0.5"); groups nest by multiplying; a backslash makes any of ``( ) " , . = + -
\\`` literal, and an unmatched bracket or quote is literal too. compel's operators (``.and()``,
``.blend()``, ``.swap()``, ``.attend()``, ``withLora()``) are refused with a ``UserError``.

In both, ``BREAK`` (upper case, a whole word) starts a new 75-token chunk: it is the fragment
``("BREAK", None)``, the only one whose weight is None. Adjacent fragments of equal weight are merged
(never a BREAK); an empty prompt is ``[("", 1.0)]``. A malformed weight is a one-line ``UserError``.

The compel syntax is parsed here, not by ``compel.prompt_parser``: that pyparsing grammar backtracks
exponentially in the nesting depth (seven nested brackets take about 18 s, a cheap way to stall a
server) unless pyparsing's process-wide packrat cache is switched on; importing it also imports all
of compel (torch, transformers, diffusers); and compel is not an ssdxl dependency. The tests check
this parser's weights against compel's own where compel is installed.
"""

from __future__ import annotations

import re

from ssdxl.errors import UserError

UP, DOWN = 1.1, 1 / 1.1  # a1111's ( ) and [ ]
PLUS, MINUS = 1.1, 0.9  # compel's + and -
BREAK = "BREAK"
SYNTAXES = ("a1111", "compel")

_A1111_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]        # escaped bracket or backslash
    | \(|\[             # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)   # ':1.3)' closes a weighted group
    | \)|\]             # closing brackets
    | \bBREAK\b         # chunk break
    | [^\\()\[\]:B]+    # plain text
    | .                 # anything else (a lone ':' or 'B')
    """,
    re.VERBOSE | re.DOTALL,
)

_COMPEL_ESCAPE = r"""\\[()",.=+\-\\]"""
_COMPEL_TOKEN = re.compile(
    rf"""
    (?P<brk>\bBREAK\b)
    | (?P<space>\s+)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<quote>")
    | (?P<word>(?:{_COMPEL_ESCAPE}|\\|(?!\bBREAK\b)[^\s()"\\])+)   # escapes and lone backslashes included
    """,
    re.VERBOSE,
)
# what may follow ')' or a closing '"' with no space between: a number (ending in a digit, so a
# sentence's full stop is left alone), or a run of '+' or of '-'
_COMPEL_SUFFIX = re.compile(r"-?\.?\d(?:[\d.]*\d)?|\++|-+")
# a word ending in a run of '+' or of '-', then perhaps punctuation: 'cat++', 'cat-,'
_COMPEL_WEIGHTED_WORD = re.compile(r"((?:\\.|[^\\])*?(?:\\.|[^+\-\\]))(\++|-+)([^\w+\-\\]*)", re.DOTALL)
_COMPEL_OPERATORS = (
    (re.compile(r"(?<!\\)\.(?:and|add)\s*\("), "compel's .and() conjunctions are not supported"),
    (re.compile(r"(?<!\\)\.blend\s*\("), "compel's .blend() is not supported"),
    (re.compile(r"(?<!\\)\.swap\s*\("), "compel's .swap() (prompt-to-prompt) is not supported"),
    (re.compile(r"(?<!\\)\.attend\s*\("), "compel's .attend() is not supported; write (words)1.3 or word++"),
    (re.compile(r"\b(?:with|use)Lora\s*\("), "compel's withLora() is not supported; use <lora:name:1.0> or --lora"),
)


def parse_prompt(prompt: str, syntax: str = "a1111") -> list[tuple[str, float | None]]:
    """Split ``prompt`` into (text, weight) fragments in ``syntax``; ``("BREAK", None)`` marks a chunk break."""
    if syntax == "a1111":
        return _parse_a1111(prompt)
    if syntax == "compel":
        return _parse_compel(prompt)
    raise UserError(f"unknown prompt syntax {syntax!r}; choose one of: {', '.join(SYNTAXES)}")


def _parse_a1111(prompt: str) -> list[tuple[str, float | None]]:
    fragments: list[list] = []  # [text, weight]; mutable so that closing groups can scale them
    open_round: list[tuple[int, int]] = []  # (fragment index, character offset) where each '(' group starts
    open_square: list[int] = []
    for match in _A1111_TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            open_round.append((len(fragments), match.start()))
        elif token == "[":
            open_square.append(len(fragments))
        elif weight is not None and open_round:
            start, offset = open_round.pop()
            _scale(fragments, start, _number(weight, f":{weight}", prompt[offset : match.end()], "(word:1.2)"))
        elif token == ")" and open_round:
            _scale(fragments, open_round.pop()[0], UP)
        elif token == "]" and open_square:
            _scale(fragments, open_square.pop(), DOWN)
        elif token == BREAK:
            fragments.append([BREAK, None])
        else:
            fragments.append([token, 1.0])
    for start, _ in open_round:  # unclosed brackets still count, as in A1111
        _scale(fragments, start, UP)
    for start in open_square:
        _scale(fragments, start, DOWN)
    return _merge(fragments)


def _parse_compel(prompt: str) -> list[tuple[str, float | None]]:
    for pattern, message in _COMPEL_OPERATORS:
        if found := pattern.search(prompt):
            close = prompt.find(")", found.end())
            raise UserError(f"{message} (in {_quote(prompt[: close + 1 if close >= 0 else len(prompt)])})")
    tokens: list[tuple[str, str, int]] = []  # (kind, raw text, offset)
    position = 0
    while position < len(prompt):
        match = _COMPEL_TOKEN.match(prompt, position)  # every character matches one alternative
        tokens.append((match.lastgroup, match.group(0), position))
        position = match.end()
    quotes = [i for i, token in enumerate(tokens) if token[0] == "quote"]
    for n, i in enumerate(quotes):  # quotes pair in order; an odd last one is literal
        kind = "literal" if n == len(quotes) - 1 and n % 2 == 0 else ("qopen", "qclose")[n % 2]
        tokens[i] = (kind, *tokens[i][1:])

    fragments: list[list] = []
    stack: list[tuple[str, int, int]] = []  # open '(' or '"': (kind, index of its placeholder fragment, offset)
    i = 0
    while i < len(tokens):
        kind, text, offset = tokens[i]
        i += 1
        if kind == "brk":
            fragments.append([BREAK, None])
        elif kind in ("open", "qopen"):  # the placeholder stays as literal text if the group never closes
            stack.append((kind, len(fragments), offset))
            fragments.append([text, 1.0])
        elif (kind == "close" and stack and stack[-1][0] == "open") or kind == "qclose":
            while kind == "qclose" and stack[-1][0] != "qopen":
                stack.pop()  # a '(' left open inside quotes is literal
            _, start, group_offset = stack.pop()
            fragments[start][0] = ""
            if i < len(tokens) and tokens[i][0] == "word" and (suffix := _COMPEL_SUFFIX.match(tokens[i][1])):
                end = offset + 1 + suffix.end()  # just past the weight
                _scale(fragments, start, _compel_weight(suffix.group(0), prompt[group_offset:end]))
                rest = tokens[i][1][suffix.end() :]
                tokens[i] = ("word", rest, tokens[i][2] + suffix.end()) if rest else ("space", "", end)
        elif kind == "word":
            _compel_word(fragments, text)
        else:  # whitespace, an unmatched ')' or an unpaired '"'
            fragments.append([text, 1.0])
    return _merge(fragments)


def _compel_word(fragments: list[list], word: str) -> None:
    """Append ``word``'s fragments: 'cat++,' is ('cat', 1.21) then (',', 1.0)."""
    match = _COMPEL_WEIGHTED_WORD.fullmatch(word)
    if match is None:
        fragments.append([_unescape(word), 1.0])
        return
    base, suffix, tail = match.groups()
    fragments.append([_unescape(base), _compel_weight(suffix, word)])
    fragments.append([tail, 1.0])


def _compel_weight(suffix: str, context: str) -> float:
    """The factor a '+'/'-' run or a number after a word or group stands for."""
    if suffix[0] == "+" or set(suffix) == {"-"}:
        return (PLUS if suffix[0] == "+" else MINUS) ** len(suffix)
    return _number(suffix, suffix, context, "(words)1.2")


def _unescape(text: str) -> str:
    return re.sub(_COMPEL_ESCAPE, lambda match: match.group(0)[1], text)


def _number(text: str, bad: str, context: str, example: str) -> float:
    """``text`` as a float, or a one-line UserError quoting ``bad`` in ``context``."""
    try:
        return float(text)
    except ValueError:
        raise UserError(f"prompt weight {_quote(bad)} in {_quote(context)} is not a number; write {example}") from None


def _quote(text: str, limit: int = 80) -> str:
    """``text`` in single quotes on one line, its end kept if it is long."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return "'" + (text if len(text) <= limit else "…" + text[-limit:]) + "'"


def _scale(fragments: list[list], start: int, factor: float) -> None:
    for fragment in fragments[start:]:
        if fragment[1] is not None:  # BREAK markers keep None
            fragment[1] *= factor


def _merge(fragments: list[list]) -> list[tuple[str, float | None]]:
    merged: list[tuple[str, float | None]] = []
    for text, weight in fragments:
        if not text:
            continue
        if merged and merged[-1][1] == weight and weight is not None:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]
