"""What the access log keeps of a request's query: its names, never a value."""

from __future__ import annotations

import logging

import pytest

from krypton.logs import WithholdQueryValues

SECRET = "kr_" + "S3cr3t-" * 6 + "x"  # as long as a real key: 46 characters


def _logged(target: str) -> str:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", target, "1.1", 200), None)
    WithholdQueryValues().filter(record)
    return record.getMessage()


@pytest.mark.parametrize("query", [
    f"api_key={SECRET}", f"view=drop&api_key={SECRET}", SECRET, f"k%3D{SECRET}",
    f"{SECRET}=x", f"a=b&{SECRET}&c=d"])
def test_no_query_value_or_bare_query_part_reaches_the_access_log(query: str) -> None:
    line = _logged(f"/v1/heatmaps/abc/heatmap.png?{query}")
    assert SECRET not in line and "/v1/heatmaps/abc/heatmap.png?" in line


def test_the_names_of_a_plain_query_are_kept() -> None:
    assert "?view=*&size=*" in _logged("/v1/heatmaps/abc/heatmap.png?view=drop&size=512")


def test_a_target_without_a_query_is_left_as_it_is() -> None:
    assert '"GET /v1/heatmaps/abc HTTP/1.1"' in _logged("/v1/heatmaps/abc")
