"""The search page at / in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium): a text query
linked as /?q=..., and a dropped image, render the nearest items of every indexed modality with their media, fetched
through /v1/media behind the API key; /v1/media serves indexed items only, by id."""
from __future__ import annotations

import base64
import os
import shutil

import pytest
import requests

from tests.media_factory import png_bytes
from tests.serving.test_serve import _config, _ServeCommand

pytestmark = pytest.mark.slow
KEY = "page-test-key"


@pytest.fixture(scope="module")
def page_server(ray_session, trained, sample_corpus, tmp_path_factory):
    """The sample corpus (files on disk, every format) embedded with the model's encoders and served with the
    trained model as a searched store, behind an API key."""
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.job import run_embed

    tmp = tmp_path_factory.mktemp("page")
    store = str(tmp / "store")
    run_embed(EmbedConfig(input=sample_corpus, output=store, modalities=["image", "text", "audio", "video"]))
    config = _config(str(tmp), "serve.yaml", {"model": trained[0], "features": store, "api_key_env": "PAGE_TEST_KEY",
                                               "modalities": ["image", "text", "audio", "video"]},
                     {"Gateway": {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"PAGE_TEST_KEY": KEY}}}},
                      "encoder-text": {}, "encoder-image": {},
                      "encoder-audio": {}, "encoder-video": {}, "SearchIndex": {"ray_actor_options": {"num_cpus": 0.1}}})
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PAGE_TEST_KEY": KEY}
    from ray import serve

    try:
        with _ServeCommand(["--config", config], env, timeout_s=600) as server:
            yield server.url
            server.stop()
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "the page test needs Debian's chromium and chromium-driver (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(60)
    yield browser
    browser.quit()


def _results(browser, timeout_s: float = 90) -> dict[str, list[dict]]:
    """Once the page has rendered every indexed modality's column with its media loaded: per modality, its hits."""
    from selenium.webdriver.support.ui import WebDriverWait

    def rendered(driver):
        if "error" in driver.find_element("id", "status").get_attribute("class"):
            raise AssertionError(driver.find_element("id", "status").text)
        return driver.execute_script("""
            const columns = [...document.querySelectorAll('#results .column')];
            if (columns.length < 4) return null;
            const images = [...document.querySelectorAll('.hit img')];
            if (!images.length || images.some((img) => !img.complete || img.naturalWidth === 0)) return null;
            return Object.fromEntries(columns.map((c) => [c.dataset.modality, [...c.querySelectorAll('.hit')].map((h) => ({
                id: h.dataset.id, score: parseFloat(h.querySelector('.score').textContent.split(' ')[1]),
                media: h.querySelector('img, audio, video') ? h.querySelector('img, audio, video').tagName : null,
                blob: h.querySelector('[src^="blob:"]') !== null, text: h.querySelector('.text')?.textContent ?? null}))]));
        """)

    return WebDriverWait(browser, timeout_s, poll_frequency=0.5).until(rendered)


def test_the_page_runs_a_linked_query_and_a_dropped_image(page_server, browser, tmp_path):
    url = page_server
    browser.get(url + "/")
    assert browser.title == "OneEncoder search"
    browser.find_element("css selector", "#key-box summary").click()
    browser.find_element("id", "key").send_keys(KEY)
    browser.find_element("css selector", "#key-form button").click()

    browser.get(url + "/?q=a+red+circle")  # a linked query runs on load (the key is kept for the tab)
    assert browser.find_element("id", "query").get_attribute("value") == "a red circle"
    hits = _results(browser)
    assert set(hits) == {"image", "text", "audio", "video"}, hits.keys()
    for modality, found in hits.items():
        assert len(found) == 6, (modality, found)
        scores = [h["score"] for h in found]
        assert scores == sorted(scores, reverse=True), (modality, scores)
        if modality == "text":  # a store keeps no text: the hits show their ids
            assert all(h["id"] and h["media"] is None for h in found), found
        else:
            assert all(h["media"] == {"image": "IMG", "audio": "AUDIO", "video": "VIDEO"}[modality] and h["blob"]
                       for h in found), found
    for modality, found in hits.items():  # the page shows what the API answers, in its order
        answer = requests.post(url + "/v1/search", json={"query": "a red circle", "target_modality": modality, "k": 6},
                               headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()["data"]
        assert [h["id"] for h in found] == [h["id"] for h in answer], modality
    browser.save_screenshot(str(tmp_path / "search-text.png"))

    # a dropped image: a real drop event carrying a PNG file, as the browser sends one
    browser.execute_script("document.querySelector('#results').replaceChildren()")
    png = base64.b64encode(png_bytes((64, 64), (220, 20, 20))).decode()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'red.png', {type: 'image/png'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
    """, png)
    hits = _results(browser)
    assert set(hits) == {"image", "text", "audio", "video"} and all(len(v) == 6 for v in hits.values())
    assert "an image query" in browser.find_element("id", "status").text
    assert browser.find_element("css selector", "#query-preview img").get_attribute("src").startswith("data:image/png")
    shot = tmp_path / "search-image.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ONEENCODER_PAGE_SCREENSHOT"):  # how docs/images/search-page.png is remade
        shutil.copy(tmp_path / "search-text.png", os.environ["ONEENCODER_PAGE_SCREENSHOT"])


def test_media_is_served_for_indexed_items_only_behind_the_key(page_server, sample_corpus):
    url, auth = page_server, {"Authorization": f"Bearer {KEY}"}
    hit = requests.post(url + "/v1/search", json={"query": "a red circle", "target_modality": "image", "k": 1},
                        headers=auth, timeout=60).json()["data"][0]
    params = {"modality": "image", "id": hit["id"]}
    assert requests.get(url + "/v1/media", params=params, timeout=30).status_code == 401
    media = requests.get(url + "/v1/media", params=params, headers=auth, timeout=30)
    assert media.status_code == 200 and media.headers["content-type"] in ("image/png", "image/jpeg")
    assert media.headers["x-content-type-options"] == "nosniff"
    with open(hit["uri"], "rb") as fh:
        assert media.content == fh.read()
    for params, status, code in (
            ({"modality": "image", "id": "no-such-item"}, 404, "media_not_found"),
            ({"modality": "image", "id": "../../../../etc/passwd"}, 404, "media_not_found"),
            ({"modality": "image", "id": hit["uri"]}, 404, "media_not_found"),  # a path is not an id
            ({"modality": "text", "id": hit["id"]}, 404, "media_not_stored"),   # text is inline
            ({"modality": "smell", "id": hit["id"]}, 400, "unsupported_modality"),
            ({"modality": "image", "id": "x" * 1025}, 400, "invalid_id")):
        r = requests.get(url + "/v1/media", params=params, headers=auth, timeout=30)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (params, r.text)
    page = requests.get(url + "/", timeout=30)  # the page itself holds no data: no key needed
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
