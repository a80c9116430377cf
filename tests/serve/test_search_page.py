"""The search page (GET /, maple/serving/static/search.html) in a real browser: Debian's Chromium driven by Selenium,
against the folder's shared server (tests/serve/conftest.py: bearer auth on, an image index and a caption index).
What the page shows is compared with what POST /v1/search answers for the same query."""

from __future__ import annotations

import base64
import shutil

import pyarrow.parquet as pq
import pytest
import requests

from tests.fixtures.serve import KEY

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and "
                                "chromium-driver (`make setup` installs them with apt-get where it runs as root)")
TOP_K = 8  # the page's default
QUERY = "a small red circle left of a blue square"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium refuses to run as root with its sandbox (the CI runs as root)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)  # no Selenium Manager: nothing is downloaded
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()  # closes Chromium and stops the chromedriver process it started
        if service.process is not None and service.process.poll() is None:
            service.process.kill()


def api_search(server: str, body: dict) -> dict:
    response = requests.post(f"{server}/v1/search", json={"top_k": TOP_K, "return_documents": True, **body},
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def open_page(browser, server: str, key: str | None) -> None:
    """A fresh page with the key in the tab's sessionStorage (None: no key)."""
    browser.get(f"{server}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server}/")
    if key:
        field = browser.find_element("id", "api-key")
        field.clear()
        field.send_keys(key)
        browser.find_element("id", "save-key").click()


def run(browser, action) -> str:
    """Do `action` (what starts a search) and wait until the page has shown that search's answer; returns the
    state ("done", "error"). The page counts answered searches in #results[data-seq]."""
    from selenium.webdriver.support.ui import WebDriverWait

    results = browser.find_element("id", "results")
    before = int(results.get_attribute("data-seq"))
    action()
    WebDriverWait(browser, 60).until(lambda _: int(results.get_attribute("data-seq")) > before)
    return results.get_attribute("data-state")


def type_query(browser, text: str) -> None:
    field = browser.find_element("id", "query")
    field.clear()
    field.send_keys(text)
    browser.find_element("id", "search-text").click()


def shown(browser) -> list[dict]:
    """The hits on the page, in order: id, image src, caption, the score texts."""
    out = []
    for li in browser.find_elements("css selector", "#results > li.hit"):
        images = li.find_elements("tag name", "img")
        captions = li.find_elements("class name", "caption")
        reranks = li.find_elements("class name", "rerank-score")
        out.append({"id": li.get_attribute("data-id"), "image": images[0].get_attribute("src") if images else None,
                    "caption": captions[0].text if captions else None,
                    "score": li.find_element("class name", "score").text,
                    "rerank": reranks[0].text if reranks else None})
    return out


def test_a_search_without_the_key_says_401_and_where_to_put_the_key(browser, server):
    open_page(browser, server, key=None)
    assert run(browser, lambda: type_query(browser, QUERY)) == "error"
    message = browser.find_element("id", "message").text
    assert message.startswith("401") and "API key" in message and shown(browser) == []


def test_a_text_query_shows_the_apis_top_images_in_its_order_with_their_scores(browser, server):
    open_page(browser, server, KEY)
    assert run(browser, lambda: type_query(browser, QUERY)) == "done"
    expected = api_search(server, {"query": QUERY})["data"]
    hits = shown(browser)
    assert [h["id"] for h in hits] == [e["id"] for e in expected]
    assert [h["image"] for h in hits] == [e["document"]["image"] for e in expected]
    assert [h["score"] for h in hits] == [f"cosine {e['score']:.3f}" for e in expected]
    assert all(h["rerank"] is None for h in hits)
    # every picture is drawn: the browser decoded the data URL the API returned
    assert browser.execute_script("return [...document.querySelectorAll('#results img')]"
                                  ".every(i => i.complete && i.naturalWidth > 0)")


def test_the_rerank_toggle_shows_the_rerankers_order_and_scores(browser, server):
    open_page(browser, server, KEY)
    run(browser, lambda: type_query(browser, QUERY))
    assert run(browser, lambda: browser.find_element("id", "rerank").click()) == "done"  # searches again
    expected = api_search(server, {"query": QUERY, "rerank": True})["data"]
    hits = shown(browser)
    assert [h["id"] for h in hits] == [e["id"] for e in expected]
    assert [h["rerank"] for h in hits] == [f"rerank {e['rerank_score']:.3f}" for e in expected]
    assert "reranked by tiny-cross-encoder:local" in browser.find_element("id", "message").text


def test_an_image_query_shows_the_apis_top_captions(browser, server, corpus, tmp_path):
    row = pq.read_table(min(corpus.glob("*.parquet")), columns=["id", "image"]).slice(0, 1).to_pylist()[0]
    picture = tmp_path / "query.png"
    picture.write_bytes(row["image"])
    open_page(browser, server, KEY)
    assert run(browser, lambda: browser.find_element("id", "image-file").send_keys(str(picture))) == "done"
    expected = api_search(server, {"query": {"image": "data:image/png;base64," +
                                             base64.b64encode(row["image"]).decode()}})
    assert expected["modality"] == "text"
    hits = shown(browser)
    assert [(h["id"], h["caption"]) for h in hits] == [(e["id"], e["document"]["text"]) for e in expected["data"]]
    assert "captions for the image query.png" in browser.find_element("id", "message").text
