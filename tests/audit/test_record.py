"""The record's time format: one formatter for records, checkpoints and seals."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.record import rfc3339


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_rfc3339_matches_the_datetime_formatting(t: float) -> None:
    got = rfc3339(t)
    assert len(got) == 27
    parsed = datetime.strptime(got, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    # Within a microsecond of datetime's own rounding of the float.
    assert abs(parsed - datetime.fromtimestamp(t, UTC)).total_seconds() <= 1e-6


def test_the_cached_date_part_follows_the_second() -> None:
    assert rfc3339(1_795_633_844.25) == "2026-11-25T19:10:44.250000Z"
    assert rfc3339(1_795_633_845.5) == "2026-11-25T19:10:45.500000Z"
    assert rfc3339(1_795_633_844.75) == "2026-11-25T19:10:44.750000Z"
