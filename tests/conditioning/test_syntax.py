"""Prompt-weighting syntaxes: parse_prompt's fragments for the a1111 and compel syntaxes."""

import random
import re

import pytest

from ssdxl.conditioning.weighting import BREAK, SYNTAXES, parse_prompt
from ssdxl.errors import UserError

BRK = ("BREAK", None)


def approx(fragments):
    """Expected fragments with approximate weights (1.1 ** 2 is not 1.21 in floats)."""
    return [(text, None if weight is None else pytest.approx(weight)) for text, weight in fragments]


def test_constants():
    assert SYNTAXES == ("a1111", "compel") and BREAK == "BREAK"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle", [("a red circle", 1.0)]),
        ("a (red) circle", [("a ", 1.0), ("red", 1.1), (" circle", 1.0)]),
        ("a (red:1.5) circle", [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]),
        ("[blurry]", [("blurry", 1 / 1.1)]),
        ("((red))", [("red", 1.21)]),
        ("((red):2)", [("red", 2.2)]),
        ("(a (b:0.5) [c])", [("a ", 1.1), ("b", 0.55), (" ", 1.1), ("c", 1.0)]),
        ("(cat:-0.5)", [("cat", -0.5)]),
        ("a (cat:-1) b", [("a ", 1.0), ("cat", -1.0), (" b", 1.0)]),
        ("((cat:-0.5))", [("cat", -0.55)]),
        ("(cat: 0 )", [("cat", 0.0)]),
        (r"a \(literal\) \[x\] Big BREAKFAST", [("a (literal) [x] Big BREAKFAST", 1.0)]),
        ("time: 5 (x:0.5)", [("time: 5 ", 1.0), ("x", 0.5)]),
        ("(cat", [("cat", 1.1)]),  # unclosed: weights the rest, as A1111
        ("a [b (c", [("a ", 1.0), ("b ", 1 / 1.1), ("c", 1.0)]),
        ("cat)] x", [("cat)] x", 1.0)]),
        ("cat++ (dog)1.3", [("cat++ ", 1.0), ("dog", 1.1), ("1.3", 1.0)]),  # compel syntax is text here
        ("(cat:1e3)", [("cat:1e3", 1.1)]),  # not a weight, as in A1111
    ],
)
def test_a1111(prompt, expected):
    assert parse_prompt(prompt) == approx(expected)
    assert parse_prompt(prompt, "a1111") == approx(expected)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "a cat++ sitting on a (red mat)1.3, (blurry)--",
            [("a ", 1.0), ("cat", 1.21), (" sitting on a ", 1.0), ("red mat", 1.3), (", ", 1.0), ("blurry", 0.81)],
        ),
        ("cat+ dog-", [("cat", 1.1), (" ", 1.0), ("dog", 0.9)]),
        ("cat+++ dog---", [("cat", 1.1**3), (" ", 1.0), ("dog", 0.9**3)]),
        ("(a b)+ c", [("a b", 1.1), (" c", 1.0)]),
        ("(a b)- c", [("a b", 0.9), (" c", 1.0)]),
        ("(a b)1.3", [("a b", 1.3)]),
        ("(a b)0.5 (c)2", [("a b", 0.5), (" ", 1.0), ("c", 2.0)]),
        ("(a b)-0.5", [("a b", -0.5)]),
        ('"quoted words"1.3 x', [("quoted words", 1.3), (" x", 1.0)]),
        ('"a, b"-', [("a, b", 0.9)]),
        ('"a (b)++ c"0.5', [("a ", 0.5), ("b", 0.605), (" c", 0.5)]),
        ("((a b)1.5 c)1.2", [("a b", 1.8), (" c", 1.2)]),
        ("(a (b)++ c)--", [("a ", 0.81), ("b", 0.9801), (" c", 0.81)]),
        ("(a b c)", [("a b c", 1.0)]),  # brackets alone only group
        ("cat++, dog-.", [("cat", 1.21), (", ", 1.0), ("dog", 0.9), (".", 1.0)]),
        ("(a)1.3.", [("a", 1.3), (".", 1.0)]),  # a full stop after a weight
        ("c++ well-known a - b", [("c", 1.21), (" well-known a - b", 1.0)]),
        ("cat ++ cat++- --x", [("cat ++ cat++- --x", 1.0)]),
        (r"a \(literal\) x", [("a (literal) x", 1.0)]),
        (r"\(cat\)++", [("(cat)", 1.21)]),
        (r"x\+\+ \"q\" back\\slash \, \. \= \z", [('x++ "q" back\\slash , . = \\z', 1.0)]),
        ("(cat", [("(cat", 1.0)]),  # unmatched brackets and quotes are text
        ("a (b (c)1.2", [("a (b ", 1.0), ("c", 1.2)]),
        ("cat) dog+", [("cat) ", 1.0), ("dog", 1.1)]),
        ('say "hi', [('say "hi', 1.0)]),
        ("()+ x", [(" x", 1.0)]),
        ("(cat:1.2) [dog]", [("cat:1.2 [dog]", 1.0)]),  # a1111 syntax is text here
    ],
)
def test_compel(prompt, expected):
    assert parse_prompt(prompt, "compel") == approx(expected)


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a BREAK b", [("a ", 1.0), BRK, (" b", 1.0)]),
        ("BREAK", [BRK]),
        ("a BREAK BREAK b", [("a ", 1.0), BRK, (" ", 1.0), BRK, (" b", 1.0)]),  # BREAKs never merge
        ("a,BREAK,b", [("a,", 1.0), BRK, (",b", 1.0)]),
        ("BREAKFAST unBREAKable break", [("BREAKFAST unBREAKable break", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_break_and_empty_in_both_syntaxes(syntax, prompt, expected):
    assert parse_prompt(prompt, syntax) == expected


def test_break_inside_a_group_keeps_none():
    assert parse_prompt("(a BREAK b)") == approx([("a ", 1.1), BRK, (" b", 1.1)])
    assert parse_prompt("(a BREAK b:-2)") == [("a ", -2.0), BRK, (" b", -2.0)]
    assert parse_prompt("(a BREAK b)1.5", "compel") == [("a ", 1.5), BRK, (" b", 1.5)]
    assert parse_prompt("(a BREAK b)--", "compel") == approx([("a ", 0.81), BRK, (" b", 0.81)])


def _one_line_error(prompt: str, syntax: str) -> str:
    with pytest.raises(UserError) as caught:
        parse_prompt(prompt, syntax)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("prompt", "bad", "group"),
    [("(cat:.)", ":.", "(cat:.)"), ("a (cat:1.2.3) b", ":1.2.3", "(cat:1.2.3)"), ("((x:..):2)", ":..", "(x:..)")],
)
def test_a1111_malformed_weight(prompt, bad, group):
    message = _one_line_error(prompt, "a1111")
    assert message == f"prompt weight '{bad}' in '{group}' is not a number; write (word:1.2)"


@pytest.mark.parametrize(
    ("prompt", "bad", "group"),
    [("(cat)1.2.3", "1.2.3", "(cat)1.2.3"), ('a "b c"1..5 d', "1..5", '"b c"1..5')],
)
def test_compel_malformed_weight(prompt, bad, group):
    message = _one_line_error(prompt, "compel")
    assert message == f"prompt weight '{bad}' in '{group}' is not a number; write (words)1.2"


def test_malformed_weight_message_stays_on_one_line():
    message = _one_line_error("(a\nb:.)", "a1111")
    assert "'(a\\nb:.)'" in message


@pytest.mark.parametrize(
    ("prompt", "words", "quoted"),
    [
        ('("a cat", "a dog").and()', ".and()", '("a cat", "a dog").and()'),
        ("(a cat, a dog).and(1, 0.5) x", ".and()", "(a cat, a dog).and(1, 0.5)"),
        ('("a cat", "a dog").blend(0.7, 0.3)', ".blend()", '("a cat", "a dog").blend(0.7, 0.3)'),
        ("a cat.swap(dog)", ".swap()", "a cat.swap(dog)"),
        ("cat.attend(1.4", ".attend()", "cat.attend(1.4"),
        ("withLora(foo, 0.5) a cat", "withLora()", "withLora(foo, 0.5)"),
    ],
)
def test_compel_operators_are_refused(prompt, words, quoted):
    message = _one_line_error(prompt, "compel")
    assert words in message and "not supported" in message and message.endswith(f"(in '{quoted}')")


def test_escaped_operator_is_text():
    assert parse_prompt(r"a\.and(b)", "compel") == [("a.andb", 1.0)]


def test_unknown_syntax():
    with pytest.raises(UserError, match=re.escape("unknown prompt syntax 'invoke'; choose one of: a1111, compel")):
        parse_prompt("a cat", "invoke")


def test_deep_nesting_is_fast():
    prompt = "(" * 200 + "a" + ")+" * 200
    assert parse_prompt(prompt, "compel") == approx([("a", 1.1**200)])
    assert parse_prompt("(" * 200 + "a" + ")" * 200) == approx([("a", 1.1**200)])


ORACLE_PROMPTS = [
    "a cat++ sitting on a (red mat)1.3, (blurry)--",
    "cat+ dog- bird+++ fish---",
    "((a b)1.5 c)1.2 d",
    "(a (b)++ c)-- d",
    '"quoted words"1.3, plain words',
    '"a (b)+ c"0.8',
    r"a \(literal\) x, \(cat\)++",
    "well-known c++ a - b",
    "(a b)0.5, (c)2 (d)+",
    "masterpiece, (best quality)++, 1girl, (detailed eyes)1.2",
]


def _normalised(fragments):
    """Fragments without whitespace (tokenizers drop it), merged again; compel spaces text differently."""
    out: list[tuple[str, float]] = []
    for text, weight in fragments:
        text = "".join(text.split())
        if not text:
            continue
        if out and out[-1][1] == pytest.approx(weight):
            out[-1] = (out[-1][0] + text, out[-1][1])
        else:
            out.append((text, weight))
    return [(text, round(weight, 6)) for text, weight in out]


@pytest.mark.parametrize("prompt", ORACLE_PROMPTS)
def test_compel_agrees_with_compels_own_parser(prompt):
    prompt_parser = pytest.importorskip("compel.prompt_parser")
    (flattened,) = prompt_parser.PromptParser().parse_conjunction(prompt).prompts
    theirs = [(fragment.text, fragment.weight) for fragment in flattened.children]
    assert _normalised(parse_prompt(prompt, "compel")) == _normalised(theirs)


def test_long_prompt_error_quotes_the_end():
    message = _one_line_error("word " * 100 + "(a, b).blend(1, 1) and more", "compel")
    assert message.endswith("word word (a, b).blend(1, 1)')") and len(message) < 200


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_any_string_gives_fragments_or_a_user_error(syntax):
    rng = random.Random(0)
    alphabet = [" ", "BREAK", "\n", "1.5", *'ab:.,-+()[]"\\12']
    for _ in range(3000):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        try:
            fragments = parse_prompt(prompt, syntax)
        except UserError as error:
            assert "\n" not in str(error)
            continue
        assert fragments and all(isinstance(text, str) for text, _ in fragments)
        assert all((weight is None) == (text == BREAK) for text, weight in fragments)
