"""The chat page's files as the API serves them: the page with its settings and a
Content-Security-Policy, scripts as JavaScript (ES modules need it), the favicon, and nothing
outside api/static."""

from __future__ import annotations

import httpx
import pytest

from tests.procs import Stack


def test_the_page_carries_its_settings_and_a_content_security_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.api_url}/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-llm-mode="simulator"' in page.text and 'data-max-chars="8000"' in page.text
    assert "__" not in page.text  # every placeholder filled
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp


@pytest.mark.parametrize(("path", "media_type"), [
    ("/static/js/app.js", "text/javascript"),
    ("/static/vendor/markdown-it-15.0.3.esm.min.mjs", "text/javascript"),
    ("/static/vendor/purify-3.5.0.es.mjs", "text/javascript"),
    ("/static/app.css", "text/css"),
    ("/static/favicon.svg", "image/svg+xml"),
    ("/favicon.ico", "image/x-icon"),
])
def test_the_page_files_are_served_with_their_type(stack: Stack, path: str,
                                                   media_type: str) -> None:
    response = httpx.get(f"{stack.api_url}{path}", timeout=5)
    assert response.status_code == 200, path
    assert response.headers["content-type"].split(";")[0] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", [
    "/static/../routes/ui.py", "/static/%2e%2e/routes/ui.py", "/static/..%2Froutes%2Fui.py",
    "/static/%2e%2e/%2e%2e/docs/screenshots/desktop.png",  # a PNG, but outside api/static
    "/static/index.html", "/static/vendor/README.md", "/static/missing.js", "/static/js",
])
def test_nothing_else_is_served_from_static(stack: Stack, path: str) -> None:
    response = httpx.get(f"{stack.api_url}{path}", timeout=5)
    assert response.status_code == 404, path
    assert response.json()["error"]["code"] in ("not_found", "http_404")
