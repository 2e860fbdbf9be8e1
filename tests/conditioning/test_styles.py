"""Prompt styles: A1111's merge rules, the built-in set, styles.csv / JSON files, the engine expanding them once, the
infotext record and the CLI (``--style``, ``--styles-file``, ``ssdxl styles``)."""

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.conditioning.styles import PLACEHOLDER, Style, apply_styles, load_styles, merge_prompts, read_styles
from ssdxl.errors import UserError
from ssdxl.output.files import request_from_png
from ssdxl.output.infotext import build_infotext, parse_infotext
from ssdxl.sampling.request import GenerationRequest

# ---------------------------------------------------------------------- A1111's rules


@pytest.mark.parametrize(
    ("template", "prompt", "merged"),
    [
        ("photo of {prompt}, 35mm", "a cat", "photo of a cat, 35mm"),  # the placeholder takes the prompt as it is
        ("{prompt} | {prompt}", " a cat ", " a cat  |  a cat "),  # every placeholder, nothing stripped
        ("photo of {prompt}", "", "photo of "),  # an empty prompt still fills the placeholder
        ("film grain ", " a cat ", "a cat, film grain"),  # no placeholder: appended after ", ", both stripped
        ("film grain", "", "film grain"),  # an empty part is left out, with its comma
        ("", " a cat ", "a cat"),
        ("  ", "", ""),
    ],
)
def test_merge_follows_a1111(template, prompt, merged):
    assert merge_prompts(template, prompt) == merged


def test_styles_apply_in_order_to_prompt_and_negative():
    styles = {
        "inner": Style("inner", "[{prompt}]", "ugly"),
        "outer": Style("outer", "{prompt}, outer", "{prompt}, blurry"),
        "bare": Style("bare", "", ""),
    }
    assert apply_styles("cat", "", ["inner", "outer"], styles) == ("[cat], outer", "ugly, blurry")
    assert apply_styles("cat", "dark", ["outer", "inner"], styles) == ("[cat, outer]", "dark, blurry, ugly")
    assert apply_styles("cat", "dark", ["inner", "inner"], styles) == ("[[cat]]", "dark, ugly, ugly")  # as A1111
    assert apply_styles(" cat ", " dark ", ["bare"], styles) == ("cat", "dark")  # appending nothing still strips
    assert apply_styles("cat", "dark", [], styles) == ("cat", "dark")


def test_unknown_style_names_the_close_ones():
    styles = load_styles()
    with pytest.raises(UserError, match=r"unknown style 'Cinematc'; did you mean cinematic"):
        apply_styles("a cat", "", ["anime", "Cinematc"], styles)
    with pytest.raises(UserError, match=r"unknown style 'zzz'; the styles are: cinematic, photographic, "):
        apply_styles("a cat", "", ["zzz"], styles)


def test_builtin_styles_wrap_the_prompt_and_add_a_negative():
    styles = load_styles()
    assert len(styles) >= 20
    wanted = {"cinematic", "photographic", "anime", "digital-art", "pixel-art", "3d-render", "neon-punk", "origami"}
    assert wanted <= set(styles)
    for name, style in styles.items():
        assert style.name == name and "," not in name  # the infotext joins names with ", "
        assert style.prompt.count(PLACEHOLDER) == 1 and style.negative_prompt.strip(), name
        prompt, negative = apply_styles("a red fox", "", [name], styles)
        assert "a red fox" in prompt and prompt != "a red fox" and negative == style.negative_prompt


# ---------------------------------------------------------------------- files


def test_a1111_csv_with_quoting_comments_and_extra_columns(tmp_path):
    csv = tmp_path / "styles.csv"
    csv.write_text(
        "\ufeffname, prompt, negative_prompt, description\n"  # a BOM and spaces after the commas, as A1111 writes
        '"noir", "black and white photo of {prompt}, ""hard"" shadows", "colour, bright"\n'
        'tags,"lines, one\nand two",,ignored\n'  # a quoted newline; an empty negative
        "# a comment row,x,y\n"
        "short\n"  # no prompt or negative
        ",no name,\n",
        encoding="utf-8",
    )
    styles = read_styles(csv)
    assert list(styles) == ["noir", "tags", "short"]
    assert styles["noir"] == Style("noir", 'black and white photo of {prompt}, "hard" shadows', "colour, bright")
    assert styles["tags"] == Style("tags", "lines, one\nand two", "")
    assert styles["short"] == Style("short", "", "")
    assert apply_styles("a cat", "blurry", ["tags", "noir"], styles) == (
        'black and white photo of a cat, lines, one\nand two, "hard" shadows',
        "blurry, colour, bright",  # "tags" adds no negative; noir's has no placeholder, so it follows the user's
    )


def test_old_a1111_text_column(tmp_path):
    csv = tmp_path / "old.csv"
    csv.write_text("name,text\nretro,{prompt} in 1970s colours\n")
    assert read_styles(csv)["retro"] == Style("retro", "{prompt} in 1970s colours", "")


def test_later_files_override_earlier_ones_and_the_builtins(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.json"
    first.write_text("name,prompt,negative_prompt\nanime,first {prompt},\nmine,mine {prompt},bad\n")
    second.write_text(json.dumps([{"name": "mine", "prompt": "second {prompt}"}, {"name": "extra", "prompt": "x"}]))
    styles = load_styles([first, second])
    builtin = load_styles()
    assert styles["anime"] == Style("anime", "first {prompt}", "") != builtin["anime"]
    assert styles["mine"] == Style("mine", "second {prompt}", "")  # JSON: negative_prompt may be left out
    assert list(styles)[: len(builtin)] == list(builtin) and list(styles)[-2:] == ["mine", "extra"]
    assert load_styles()["anime"] == builtin["anime"]  # loading files never changes the built-in set


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.csv", None, "does not exist"),
        ("bad.json", "{not json", "is not usable"),
        ("dict.json", '{"a": "b"}', "expected a list"),
        ("noname.json", '[{"prompt": "x"}]', "item 0"),
        ("number.json", '[{"name": "x", "prompt": 3}]', "must be strings"),
        ("header.csv", "title,prompt\nx,y\n", "needs the columns name,prompt,negative_prompt"),
        ("latin1.csv", b"name,prompt\ncaf\xe9,x\n", "is not usable"),
        ("huge.csv", "name,prompt\nx," + "a" * 200_000 + "\n", "line"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as caught:
        load_styles([path])
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message


# ---------------------------------------------------------------------- the engine and the record


def test_resolve_expands_styles_once_and_keeps_the_names(engine):
    request = GenerationRequest("a cat", "blurry", width=64, height=64, steps=2, seed=1, styles=["anime", "enhance"])
    resolved = engine.resolve(request)
    expected = apply_styles("a cat", "blurry", ["anime", "enhance"], engine.styles)
    assert (resolved.prompt, resolved.negative_prompt) == expected
    assert resolved.styles == ["anime", "enhance"] and resolved.styles_applied
    assert request.prompt == "a cat" and not request.styles_applied  # the caller's request is left alone
    again = engine.resolve(resolved)  # what generate() does with a request the CLI or a runner resolved
    assert (again.prompt, again.negative_prompt) == expected
    with pytest.raises(UserError, match="unknown style 'animé'; did you mean anime"):
        engine.resolve(GenerationRequest("a cat", styles=["animé"]))


def test_infotext_records_styles_and_reading_it_back_does_not_restyle(tmp_path):
    params = {
        "prompt": "anime illustration of a cat",
        "negative_prompt": "photograph",
        "steps": 2,
        "scheduler": "Euler",
        "guidance_scale": 5.0,
        "seed": 3,
        "width": 64,
        "height": 64,
        "styles": ["anime", "enhance"],
    }
    text = build_infotext(params, model_name="m", model_hash="", version="0")
    info = parse_infotext(text)
    assert info["prompt"] == params["prompt"] and info["Styles"] == "anime, enhance"
    plain = build_infotext({**params, "styles": []}, model_name="m", model_hash="", version="0")
    assert "Styles" not in parse_infotext(plain)
    meta = PngImagePlugin.PngInfo()  # an infotext alone (as A1111 or an edited file has it): Styles is a record only
    meta.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=meta)
    request, _ = request_from_png(tmp_path / "a1111.png")
    assert request.prompt == params["prompt"] and request.negative_prompt == "photograph" and request.styles == []


# ---------------------------------------------------------------------- the CLI

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_with_styles_on_the_builtin_model(tmp_path):
    styles_csv = tmp_path / "mine.csv"
    styles_csv.write_text('name,prompt,negative_prompt\nsquare,"{prompt}, on a grey background","blurry, noisy"\n')
    out = tmp_path / "styled.png"
    small = ("-W", 64, "-H", 64, "--steps", 2, "--seed", 4, "-q")
    result = run("generate", "a red circle", "--style", "square", "--style", "enhance", "--styles-file", styles_csv,
                 "-o", out, *small)  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = apply_styles("a red circle", "", ["square", "enhance"], load_styles([styles_csv]))
    with Image.open(out) as image:
        info = parse_infotext(image.text["parameters"])
        stored = json.loads(image.text["ssdxl"])
    assert (info["prompt"], info["negative_prompt"]) == expected and info["Styles"] == "square, enhance"
    assert stored["styles"] == ["square", "enhance"] and stored["styles_applied"] is True
    request, _ = request_from_png(out)
    assert (request.prompt, request.negative_prompt) == expected and request.styles_applied

    again = tmp_path / "again.png"  # --from-png: the stored prompts already hold the styles, not applied twice
    assert run("generate", "--from-png", out, "-o", again, "-q").exit_code == 0
    with Image.open(again) as image:
        assert parse_infotext(image.text["parameters"])["prompt"] == expected[0]
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(out)))
    refused = run("generate", "--from-png", out, "--style", "anime", "-o", tmp_path / "x.png", "-q")
    assert refused.exit_code == 2 and "--style cannot be used with --from-png" in refused.output

    unknown = run("generate", "a red circle", "--style", "cinemtic", "-o", tmp_path / "u.png", *small)
    assert unknown.exit_code == 2 and not (tmp_path / "u.png").exists()
    assert unknown.output.strip() == "error: unknown style 'cinemtic'; did you mean cinematic?"


def test_styles_command_lists_builtin_and_file_styles(tmp_path):
    styles_csv = tmp_path / "mine.csv"
    styles_csv.write_text("name,prompt,negative_prompt\nmy-look,{prompt} in teal,\n")
    result = run("styles", "--styles-file", styles_csv)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "prompt", "|", "negative", "prompt"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(load_styles([styles_csv]))
    assert rows["my-look"].split(None, 1)[1] == "{prompt} in teal  |  -"
    style = load_styles()["cinematic"]
    assert rows["cinematic"].split(None, 1)[1] == f"{style.prompt}  |  {style.negative_prompt}"
    missing = run("styles", "--styles-file", tmp_path / "nope.csv")
    assert missing.exit_code == 2 and "nope.csv does not exist" in missing.output
