"""Prompt styles on the server: ``--styles-file``, the lists (``/v2/styles``, A1111's ``/sdapi/v1/prompt-styles``),
``styles`` on the native and A1111 APIs and Segmind's ``style``, expanded when accepted (before LoRA tags are read),
unknown names refused with a 422 naming the field, and the web page's style picker."""

import json

import pytest
import requests
from serverkit import MODEL, start_thread_server, wait_for_jobs
from typer.testing import CliRunner

from ssdxl.conditioning.styles import apply_styles, load_styles

TINY = {"width": 64, "height": 64, "steps": 2}
SEGMIND = {"img_width": 64, "img_height": 64, "num_inference_steps": 2, "samples": 1}
STYLES_CSV = (
    "name,prompt,negative_prompt\n"
    'house,"{prompt}, in the house style","blurry, noisy"\n'
    "anime,{prompt} drawn our way,\n"  # replaces the built-in anime
    "styled-lora,{prompt} <lora:style:0.5>,\n"  # a style may call a LoRA, as a prompt does
    "long,{prompt} " + "x" * 4000 + ",\n"  # 4002 characters once "p" is in it
)


@pytest.fixture(scope="module")
def styled(tiny_dir, adapter_dirs, tmp_path_factory):
    """A server with a styles file and the shared LoRA folder; (server, its styles)."""
    root = tmp_path_factory.mktemp("styles-server")
    styles_file = root / "styles.csv"
    styles_file.write_text(STYLES_CSV)
    handle, stop = start_thread_server(
        root / "data", tiny_dir(MODEL), styles_files=[styles_file], lora_dirs=[adapter_dirs[0]]
    )
    yield handle, load_styles([styles_file])
    stop()


def field_error(response, field: str, *words: str) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body["detail"][0]["loc"] == ["body", *field.split(".")], body
    message = body["error"]["message"]
    assert all(word in message for word in words), message
    return message


def test_lists_builtin_and_file_styles_in_both_shapes(styled):
    server, styles = styled
    native = requests.get(f"{server.url}/v2/styles").json()
    a1111 = requests.get(f"{server.url}/sdapi/v1/prompt-styles").json()
    assert native == a1111
    assert [s["name"] for s in a1111] == list(styles) and "cinematic" in styles and "house" in styles
    assert all(set(s) == {"name", "prompt", "negative_prompt"} for s in a1111)
    by_name = {s["name"]: s for s in a1111}
    assert by_name["anime"] == {"name": "anime", "prompt": "{prompt} drawn our way", "negative_prompt": ""}
    assert by_name["house"]["negative_prompt"] == "blurry, noisy"


def test_a1111_styles_are_applied_recorded_and_echoed(styled):
    server, styles = styled
    body = {**TINY, "prompt": "a red circle", "negative_prompt": "dark", "styles": ["house", "cinematic"], "seed": 3}
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**body, "cfg_scale": 5})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    prompt, negative = apply_styles("a red circle", "dark", ["house", "cinematic"], styles)
    assert info["prompt"] == "a red circle" and info["all_prompts"] == [prompt]  # as A1111: the styled ones
    assert info["styles"] == ["house", "cinematic"]
    infotext = info["infotexts"][0]
    assert infotext.startswith(f"{prompt}\nNegative prompt: {negative}\n") and 'Styles: "house, cinematic"' in infotext
    job = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]
    assert job["params"]["prompt"] == prompt and job["params"]["negative_prompt"] == negative
    assert job["params"]["styles"] == ["house", "cinematic"] and job["params"]["styles_applied"] is True


def test_native_styles_expand_before_lora_tags_are_read(styled):
    server, styles = styled
    response = requests.post(f"{server.url}/v2/jobs", json={**TINY, "prompt": "a cat", "styles": ["styled-lora"]})
    assert response.status_code == 202, response.text
    params = response.json()["params"]
    assert params["prompt"] == "a cat" and params["loras"] == [["style", 0.5]]  # the style's tag became a LoRA
    assert params["styles"] == ["styled-lora"] and params["styles_applied"] is True
    (done,) = wait_for_jobs(server.url, [response.json()["id"]], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert "Styles: styled-lora" in done["images"][0]["infotext"]
    assert done["params"]["prompt"] == "a cat"  # the runner did not style it again


@pytest.mark.parametrize("style", ["base", "none", "", "Base"])
def test_segmind_base_means_no_style(styled, style):
    server, _ = styled
    response = requests.post(f"{server.url}/v1/{MODEL}", json={"prompt": "a blue square", "style": style, **SEGMIND})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    params = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]
    assert params["prompt"] == "a blue square" and params["styles"] == []


def test_segmind_style_is_applied(styled):
    server, styles = styled
    body = {"prompt": "a blue square", "style": "pixel-art", **SEGMIND}
    response = requests.post(f"{server.url}/v1/{MODEL}", json=body)
    assert response.status_code == 200, response.text
    params = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]
    assert (params["prompt"], params["negative_prompt"]) == apply_styles("a blue square", "", ["pixel-art"], styles)
    assert params["styles"] == ["pixel-art"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v2/jobs", {**TINY, "prompt": "p", "styles": ["cinematc"]}, "styles"),
        ("/sdapi/v1/txt2img", {**TINY, "prompt": "p", "styles": ["house", "cinematc"]}, "styles"),
        (f"/v1/{MODEL}", {"prompt": "p", "style": "cinematc"}, "style"),
    ],
)
def test_unknown_style_is_a_422_naming_the_field(styled, path, body, field):
    server, _ = styled
    before = len(requests.get(f"{server.url}/v2/jobs", params={"limit": 100}).json())
    field_error(requests.post(f"{server.url}{path}", json=body), field, "unknown style 'cinematc'", "cinematic")
    assert len(requests.get(f"{server.url}/v2/jobs", params={"limit": 100}).json()) == before  # no job was made


def test_too_many_styles_or_too_long_a_styled_prompt_is_a_422(styled):
    server, _ = styled
    many = {**TINY, "prompt": "p", "styles": ["house"] * 9}
    field_error(requests.post(f"{server.url}/v2/jobs", json=many), "styles")
    field_error(requests.post(f"{server.url}/sdapi/v1/txt2img", json=many), "styles", "at most 8 styles")
    long = {**TINY, "prompt": "p", "styles": ["long"]}
    field_error(requests.post(f"{server.url}/sdapi/v1/txt2img", json=long), "styles", "the styled prompt is 4002")


def test_serve_refuses_a_bad_styles_file_in_one_line(tmp_path):
    from ssdxl.cli.main import app

    gone = tmp_path / "gone.csv"
    result = CliRunner().invoke(app, ["serve", "--styles-file", str(gone), "--data", str(tmp_path / "data")])
    assert result.exit_code == 2 and result.output.strip() == f"error: styles file {gone} does not exist"


def test_style_picker_on_the_page(browser, styled):
    server, styles = styled
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#style option[value='house']", state="attached")
    names = page.locator("#style option").evaluate_all("options => options.map((o) => o.value)")
    assert names == ["", *styles]  # "none" first
    assert page.locator("#style option[value='house']").get_attribute("title") == (
        "{prompt}, in the house style\nnegative: blurry, noisy"
    )
    page.select_option("#style", "house")
    before = page.locator("#gallery figure").count()
    for selector, value in (("#prompt", "a green star"), ("#width", "64"), ("#height", "64"), ("#steps", "2")):
        page.fill(selector, value)
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {before}", timeout=60_000)
    ours = page.locator("#gallery figure figcaption", has_text="a green star")  # other tests' jobs may land too
    ours.first.wait_for(timeout=60_000)
    caption = ours.first.inner_text()
    assert caption.startswith("a green star, in the house style\nNegative prompt: blurry, noisy")
    assert "Styles: house" in caption
