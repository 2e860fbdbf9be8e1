"""The web page in headless Chromium (``browser`` in conftest.py): type a prompt, click Generate, watch the image
appear; pick LoRAs; the hires fix and outpainting sections."""

import io

import requests
from PIL import Image
from serverkit import generate_on_page


def test_generate_from_the_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#model option[value='vega']", state="attached")
    before = page.locator("#gallery figure").count()
    page.fill("#prompt", "a yellow triangle on a navy background")
    page.fill("#width", "64")
    page.fill("#height", "64")
    page.fill("#steps", "3")
    page.fill("#seed", "77")
    page.select_option("#scheduler", "Euler a")
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {before}", timeout=60_000)
    # this request's figure: a job another test left running may land in the gallery at the same moment
    figure = page.locator("#gallery figure", has_text="a yellow triangle on a navy background").first
    figure.wait_for(timeout=60_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery figure')].some(f => f.innerText.includes('yellow triangle')"
        " && f.querySelector('img').naturalWidth > 0)",
        timeout=30_000,
    )
    assert figure.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    caption = figure.locator("figcaption").inner_text()
    assert "a yellow triangle on a navy background" in caption and "Seed: 77" in caption and "Euler a" in caption
    assert page.locator("#error").is_hidden() and page.locator("#progress").is_hidden()
    assert page.locator("#generate").is_enabled()


def test_pick_loras_on_the_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#lora-choice option[value='style']", state="attached")
    assert page.locator("#adapters").is_visible() and "mytok" in page.locator("#embeddings").inner_text()
    assert page.locator("#lora-choice option[value='made_for_refiner']").count() == 1
    before = page.locator("#gallery figure").count()
    page.fill("#prompt", "a green star")
    page.click("#embeddings button:text-is('mytok')")  # an embedding hint adds its name to the prompt
    assert page.input_value("#prompt") == "a green star, mytok"
    for name in ("style", "other"):
        page.select_option("#lora-choice", name)
        page.click("#lora-add")
    page.fill("#loras li[data-name='style'] input[type=number]", "0.7")
    assert page.input_value("#loras li[data-name='style'] input[type=range]") == "0.7"  # slider follows the number
    page.click("#loras li[data-name='other'] button")  # removed again
    assert page.locator("#loras li").count() == 1
    for field, value in (("#width", "64"), ("#height", "64"), ("#steps", "2"), ("#seed", "88")):
        page.fill(field, value)
    page.click("#generate")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure').length > {before}", timeout=60_000)
    page.locator("#gallery figure", has_text="<lora:style:0.7>").first.wait_for(timeout=60_000)
    job = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]
    assert job["params"]["loras"] == [["style", 0.7]] and job["params"]["embeddings"] == ["mytok"]
    assert job["params"]["prompt"] == "a green star, mytok" and job["status"] == "succeeded"


def test_hires_fix_from_the_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#hires-upscaler option[value='Latent']", state="attached")
    assert page.locator("#ip-section").is_hidden()  # no IP-Adapter served (ControlNets: the built-in one is)
    assert page.locator("#control-section").is_visible()
    page.click("#hires-section summary")
    page.check("#hires")
    page.fill("#hires-steps", "2")
    image = generate_on_page(page, **{"#prompt": "a blue square", "#width": "64", "#height": "64", "#steps": "2"})
    assert image.size == (128, 128)  # twice the size asked for
    job = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]
    assert job["params"]["hires"]["upscaler"] == "Latent" and job["params"]["hires"]["scale"] == 2


def test_outpaint_from_the_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#model option[value='vega']", state="attached")
    page.click("#outpaint-section summary")
    original = Image.new("RGB", (64, 64), (200, 30, 30))
    buffer = io.BytesIO()
    original.save(buffer, format="PNG")
    page.set_input_files(
        "#outpaint-image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": buffer.getvalue()}]
    )
    grown = generate_on_page(page, **{"#prompt": "a red wall", "#steps": "2", "#outpaint-right": "32"})
    assert grown.size == (96, 64)
    assert grown.convert("RGB").crop((0, 0, 64, 64)).tobytes() == original.tobytes()  # every original pixel kept
    page.fill("#outpaint-right", "0")
    page.click("#generate")  # an image with nothing to add: the server's 422, shown on the page
    page.wait_for_selector("#error:not([hidden])")
    assert "outpaint" in page.locator("#error").inner_text()
