"""The benches' memory fit: a row that would not fit runs at the largest count that does."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from common import GB, LinearNeed, markdown  # noqa: E402


def test_linear_need_is_fitted_to_two_probes_and_caps_the_count():
    probes = {5: 3 * GB, 10: 4 * GB}  # 0.2 GB per item on 2 GB
    need = LinearNeed.fitted(lambda items: probes[items], 5, 10)
    assert need.fixed == 2 * GB and need.per_item == 0.2 * GB
    assert need.bytes(100) == 22 * GB
    assert need.largest(100, 24 * GB) == 100
    assert need.largest(100, 12 * GB) == 50  # (12 - 2) / 0.2
    assert need.largest(100, 1 * GB) == 0  # not even the fixed part fits
    flat = LinearNeed(3 * GB, 0.0)
    assert flat.largest(100, 4 * GB) == 100 and flat.largest(100, 2 * GB) == 0


def test_markdown_table():
    assert markdown(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | --- |\n| 1 | x |"
