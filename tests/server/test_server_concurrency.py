"""Twenty clients at once: every one answered with its own image, the compatible ones batched."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image

from ssdxl.sampling.request import GenerationRequest

CLIENTS = 20


def txt2img(url, seed):
    body = {"prompt": f"shape number {seed}", "seed": seed, "steps": 2, "width": 64, "height": 64}
    response = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)
    response.raise_for_status()
    return response.json()


def test_twenty_concurrent_clients(server, engine):
    seeds = list(range(1000, 1000 + CLIENTS))
    dispatch = server.app.state.service.dispatch
    dispatch.batch_wait = 1.0  # on a loaded 2-core machine clients trickle in: give them time to queue together
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda s: txt2img(server.url, s), seeds))
    finally:
        dispatch.batch_wait = 0.05
    images = {}
    for seed, answer in zip(seeds, answers, strict=True):
        info = json.loads(answer["info"])
        assert info["seed"] == seed and info["all_seeds"] == [seed]
        assert f"shape number {seed}" in info["infotexts"][0]
        images[seed] = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    jobs = requests.get(f"{server.url}/v2/jobs", params={"limit": CLIENTS}).json()
    assert max(job["batch_size"] for job in jobs) > 1  # requests that arrived together shared UNet batches
    for seed in seeds[:: CLIENTS // 4]:  # each is the image its request makes alone
        request = GenerationRequest(f"shape number {seed}", seed=seed, steps=2, width=64, height=64)
        alone = engine.generate(request)  # no cfg_scale sent: the model's default guidance
        a = np.asarray(alone.images[0].image, dtype=np.int16)
        b = np.asarray(images[seed].convert("RGB"), dtype=np.int16)
        # float32 on CPU: a batched UNet forward differs by ~1e-6 from a lone one, so a pixel may move a level
        assert np.abs(a - b).max() <= 2
