"""The request contract on the server (the CLI's and Python's side: tests/sampling/test_request_contract.py): the same
limits and rules whichever API a request comes through, refused when it arrives (4xx naming the field), warnings in
the job's answer."""

import pytest
import requests
from serverkit import MODEL, start_thread_server, wait_for_jobs

from ssdxl.sampling import limits

TINY = {"width": 64, "height": 64, "steps": 2}
LONG = "a" * (limits.MAX_PROMPT_CHARS + 1)


def post(server, path, body):
    return requests.post(f"{server.url}{path}", json=body, timeout=120)


def assert_refused(response, field, *words):
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field, error
    assert all(word in error["error"]["message"] for word in words), error


def finished(server, response):
    assert response.status_code == 202, response.text
    (done,) = wait_for_jobs(server.url, [response.json()["id"]], timeout=120)
    assert done["status"] == "succeeded", done
    return done


def test_strength_without_an_init_image_is_refused_when_it_arrives(server):
    assert_refused(post(server, "/v2/jobs", {"prompt": "p", **TINY, "strength": 0.5}), "strength", "init image")


def test_an_empty_prompt_is_a_prompt_in_the_jobs_api_and_the_a1111_dialect(server):
    done = finished(server, post(server, "/v2/jobs", {"prompt": "", **TINY}))
    assert len(done["images"]) == 1 and done["warnings"] == []  # the model's own size: nothing to warn about
    answer = post(server, "/sdapi/v1/txt2img", {"prompt": "", **TINY})
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1, answer.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v2/jobs", {"prompt": LONG}, "prompt"),
        ("/v2/jobs", {"prompt": "p", "negative_prompt": LONG}, "negative_prompt"),
        (f"/v1/{MODEL}", {"prompt": LONG}, "prompt"),
        ("/sdapi/v1/txt2img", {"prompt": LONG}, "prompt"),
        ("/v1/images/generations", {"prompt": LONG}, "prompt"),
        ("/v2/jobs", {"prompt": "p", "steps": limits.MAX_STEPS + 1}, "steps"),
        (f"/v1/{MODEL}", {"prompt": "p", "num_inference_steps": limits.MAX_STEPS + 1}, "num_inference_steps"),
        ("/sdapi/v1/txt2img", {"prompt": "p", "steps": limits.MAX_STEPS + 1}, "steps"),
        ("/v1/images/generations", {"prompt": "p", "steps": limits.MAX_STEPS + 1}, "steps"),
        ("/v2/jobs", {"prompt": "p", "width": limits.MAX_SIDE + 8}, "width"),
        ("/v1/images/generations", {"prompt": "p", "size": f"{limits.MAX_SIDE + 8}x64"}, "size"),
        ("/v2/jobs", {"prompt": "p", "samples": limits.MAX_SAMPLES + 1}, "samples"),
        ("/v1/images/generations", {"prompt": "p", "n": limits.MAX_SAMPLES + 1}, "n"),
    ],
)
def test_every_api_refuses_one_past_the_shared_limits(server, path, body, field):
    assert_refused(post(server, path, body), field)


def test_an_operator_may_lower_the_limits(tiny_dir, tmp_path):
    lowered = limits.RequestLimits(max_side=64, max_steps=3, max_samples=1)
    handle, stop = start_thread_server(tmp_path, tiny_dir(MODEL), limits=lowered)
    try:
        listed = requests.get(f"{handle.url}/v2/models", timeout=30).json()["limits"]  # what the web page's form reads
        assert listed == {
            "min_side": limits.MIN_SIDE,
            "max_side": 64,
            "max_steps": 3,
            "max_samples": 1,
            "max_prompt_chars": limits.MAX_PROMPT_CHARS,
        }
        assert_refused(post(handle, "/v2/jobs", {"prompt": "p", "width": 72}), "width", "64")
        assert_refused(post(handle, "/v2/jobs", {"prompt": "p", "steps": 4}), "steps", "3")
        assert_refused(post(handle, "/sdapi/v1/txt2img", {"prompt": "p", "batch_size": 2}), "samples", "1")
    finally:
        stop()


def test_a_size_far_above_the_models_own_is_a_warning_in_the_job(server):
    done = finished(server, post(server, "/v2/jobs", {"prompt": "p", "width": 128, "height": 128, "steps": 1}))
    assert len(done["warnings"]) == 1 and "4.0x the area" in done["warnings"][0], done


@pytest.mark.parametrize("path", ["/v2/jobs", "/sdapi/v1/txt2img"])
def test_lora_tags_are_applied_or_refused_never_ignored(server, path):
    unknown = post(server, path, {"prompt": "a cat <lora:nonexistent:1>", **TINY})
    assert_refused(unknown, "prompt", "nonexistent", "style")  # the names this server has
    negative = post(server, path, {"prompt": "a cat", "negative_prompt": "blurry <lora:style:1>", **TINY})
    assert_refused(negative, "negative_prompt", "prompt only")


def test_a_known_lora_tag_is_applied(server):
    done = finished(server, post(server, "/v2/jobs", {"prompt": "a cat <lora:style:0.5>", **TINY}))
    assert done["params"]["loras"] == [["style", 0.5]] and "<lora:" not in done["params"]["prompt"]
    assert 'Lora hashes: "style: ' in done["images"][0]["infotext"]
