"""The sampling web page end to end in a real headless Chromium (Debian ``chromium``, driven by Playwright with the
system browser; Playwright's own browser download is never used): load, submit, watch previews, check the images,
see an input error in the page, two users queued; a screenshot goes to ``$MDM_TEST_ARTIFACTS`` (or tmp)."""

from __future__ import annotations

import io
import os
import socket

import numpy as np
import pytest

CHROMIUM = os.environ.get("MDM_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MDM_CHROMIUM)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_run):
    pytest.importorskip("gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mdm_jax.serve.app import build_app
    from mdm_jax.serve.backends import load_backend

    backend = load_backend(demo_run)
    demo = build_app(backend, default_steps=4)
    demo.queue(max_size=8, default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True)
    yield f"http://127.0.0.1:{port}/", backend
    demo.close()


def _png(page, src: str) -> np.ndarray:
    from PIL import Image

    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _submit(page, url: str, prompt: str, num: int) -> None:
    page.goto(url)
    page.wait_for_selector("#generate")
    page.fill("#prompt textarea", prompt)
    page.fill("#steps input[type=number]", "4")
    page.press("#steps input[type=number]", "Enter")
    page.fill("#num_images input[type=number]", str(num))
    page.press("#num_images input[type=number]", "Enter")
    # Record every status line the page shows (live previews come as 'denoising: step k/n').
    page.evaluate("""() => { window.__statuses = [];
        const el = document.querySelector('#status');
        new MutationObserver(() => window.__statuses.push(el.innerText)).observe(el,
            {childList: true, subtree: true, characterData: true}); }""")
    page.click("#generate")


def test_page_generates_every_resolution_with_previews(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    url, backend = server
    artefacts = os.environ.get("MDM_TEST_ARTIFACTS", str(tmp_path))
    os.makedirs(artefacts, exist_ok=True)
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS)
        page, other = ctx.new_page(), ctx.new_page()
        # Input errors are shown in the page.
        page.goto(url)
        page.wait_for_selector("#generate")
        page.click("#generate")
        page.wait_for_selector("text=enter a prompt", timeout=120_000)
        # Two users at once: the queue runs them one after the other; both finish.
        _submit(page, url, "a red circle in the top left", 2)
        _submit(other, url, "a blue square in the center", 1)
        for pg in (page, other):
            pg.wait_for_function("document.querySelector('#status').innerText.includes('done: step 4/4')",
                                 timeout=600_000)
        statuses = page.evaluate("window.__statuses")
        assert any("denoising: step" in s for s in statuses), statuses
        for pg, n in ((page, 2), (other, 1)):
            for level, res in enumerate(backend.resolutions):
                srcs = pg.eval_on_selector_all(f"#level{level} img", "els => els.map(e => e.src)")
                assert len(srcs) == n, (level, srcs)
                imgs = [_png(pg, s) for s in srcs]
                assert all(im.shape == (res, res, 3) for im in imgs)
                assert all(im.std() > 0 for im in imgs)  # a picture, not a blank
        page.screenshot(path=os.path.join(artefacts, "serve_page.png"), full_page=True)
        ctx.close()
    assert os.path.getsize(os.path.join(artefacts, "serve_page.png")) > 1000
