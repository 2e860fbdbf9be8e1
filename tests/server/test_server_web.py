"""The web page in headless Chromium: type a prompt, click Generate, watch the image appear; pick LoRAs."""

import shutil

import pytest
import requests

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
    figure = page.locator("#gallery figure").first
    page.wait_for_function("document.querySelector('#gallery figure img').naturalWidth > 0", timeout=30_000)
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
    assert "<lora:style:0.7>" in page.locator("#gallery figure figcaption").first.inner_text()
    job = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]
    assert job["params"]["loras"] == [["style", 0.7]] and job["params"]["embeddings"] == ["mytok"]
    assert job["params"]["prompt"] == "a green star, mytok" and job["status"] == "succeeded"
