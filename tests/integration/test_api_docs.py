"""The API documents itself completely, and its docs work with no internet."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_page_loads_only_local_assets(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sources, "the docs page references no assets at all"
    for source in sources:
        assert not source.startswith(("http://", "https://", "//")), f"remote asset: {source}"
        assert api.get(source).status_code == 200, f"missing local asset: {source}"


def test_every_operation_documents_its_responses(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            assert success, f"{method.upper()} {path} documents no success response"
            if "{item_id}" in path:
                assert "404" in responses, f"{method.upper()} {path} does not document 404"
            if method in ("post", "patch") and operation.get("requestBody"):
                assert "422" in responses, f"{method.upper()} {path} does not document 422"
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
