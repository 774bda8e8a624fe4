"""``gateway audit attest`` and ``verify-attestation`` on a generated month of traffic."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from gateway.audit.attest import Attestation, verify_attestation
from gateway.audit.signing import KeyRing
from gateway.cli import main
from tests.audit.traffic import Planned, build_log, plan
from tests.support.gateway import SHIPPED_POLICY

BANNED = ("marketing.advertising", "marketing.communications.bulk")


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Planned], Path, bytes]:
    """The log, its plan, and an attestation of it for klout with the log's public keys."""
    base = tmp_path_factory.mktemp("attest")
    data_dir = base / "data"
    planned = plan(10_600, seed=5)
    build_log(data_dir, planned)
    out = base / "klout.json"
    code = main(["audit", "attest", "--upstream", "klout", "--data-dir", str(data_dir),
                 "--policies", str(SHIPPED_POLICY), "--out", str(out)])  # fmt: skip
    assert code == 0
    return data_dir, planned, out, KeyRing.load(data_dir).public_pems()


def test_attestation_figures_equal_the_traffic(
    month: tuple[Path, list[Planned], Path, bytes],
) -> None:
    """Lookups by purpose, refusals under banned purposes, vendor calls and the peak
    calls per second and per day are exactly those of the planned traffic."""
    _, planned, out, _ = month
    a = msgspec.json.decode(out.read_bytes(), type=Attestation)
    lookups = [p for p in planned if p.client is not None]
    assert a.lookups == len(lookups) >= 10_000
    assert a.lookups_by_purpose == dict(Counter(p.purpose or "(not declared)" for p in lookups))
    banned = [p for p in lookups if p.decision == "deny"
              and (p.purpose or "").startswith(BANNED)]  # fmt: skip
    assert len(banned) > 100
    assert [r.request_id for r in a.refusals_under_banned_purposes] == [
        p.request_id for p in sorted(banned, key=lambda p: (p.time, p.request_id))
    ]
    assert {r.rule for r in a.refusals_under_banned_purposes} == {"terms.klout.banned-purpose"}
    calls = [p for p in lookups if p.calls_vendor]
    assert a.vendor_calls == len(calls)
    assert a.banned_calls == 0
    per_second = Counter(p.time[:19] for p in calls)
    per_day = Counter(p.time[:10] for p in calls)
    assert a.peak_per_second.calls == max(per_second.values())
    assert a.peak_per_day.calls == max(per_day.values())
    assert a.peak_per_day.at == max(per_day.items(), key=lambda kv: (kv[1], kv[0]))[0]
    assert (a.peak_per_second.limit, a.peak_per_day.limit) == (10, 10000)
    assert a.within_terms is True
    assert a.checkpoint.size > 0


def test_attestation_names_no_people(month: tuple[Path, list[Planned], Path, bytes]) -> None:
    """No pseudonym, no commitment, no people field: only counts, request ids and purposes."""
    _, planned, out, _ = month
    text = out.read_text()
    assert "hmac-sha256" not in text
    assert '"people"' not in text
    assert '"subjects"' not in text
    pseudonyms = {s.split(":")[1] for p in planned for s in p.subjects}
    assert not any(p in text for p in list(pseudonyms)[:500])


def test_attestation_verifies_offline(
    month: tuple[Path, list[Planned], Path, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With only the public key file, verify-attestation says OK and exits 0."""
    _, _, out, pem = month
    key = tmp_path / "log.pem"
    key.write_bytes(pem)
    assert main(["audit", "verify-attestation", str(out), "--public-key", str(key)]) == 0
    assert capsys.readouterr().out.startswith("OK: attestation of klout")


def _flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] = changed[at] ^ 0x01 if changed[at] != 0x0A else 0x20
    return bytes(changed)


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        pytest.param(lambda d: d.replace(b'"lookups":', b'"lookups":1', 1), "bad_signature",
                     id="count-changed"),
        pytest.param(lambda d: d.replace(b'"within_terms":true', b'"within_terms":false'),
                     "bad_signature", id="verdict-changed"),
        pytest.param(lambda d: d.replace(b'"calls":1,', b'"calls":2,', 1), "bad_signature",
                     id="peak-changed"),
        pytest.param(lambda d: d[:-1] + b" \n", "non_canonical", id="trailing-space"),
        pytest.param(lambda d: d[: len(d) // 2], "malformed", id="truncated"),
        pytest.param(lambda d: d.replace(b'"root":"', b'"root":"A', 1), "bad_checkpoint",
                     id="checkpoint-root-changed"),
    ],
)  # fmt: skip
def test_tampered_attestation_fails(
    month: tuple[Path, list[Planned], Path, bytes], tamper: Callable[[bytes], bytes], code: str
) -> None:
    """Each named change is caught by its own step."""
    _, _, out, pem = month
    data = tamper(out.read_bytes())
    check = verify_attestation(data, pem)
    assert not check.ok
    assert check.code == code


def test_any_single_changed_byte_fails(month: tuple[Path, list[Planned], Path, bytes]) -> None:
    """A changed byte anywhere in the file (300 positions, first and last included) fails."""
    _, _, out, pem = month
    data = out.read_bytes()
    assert verify_attestation(data, pem).ok
    positions = {0, len(data) - 1, *random.Random(11).sample(range(len(data)), 298)}
    for at in positions:
        assert not verify_attestation(_flip(data, at), pem).ok, at


def test_another_logs_key_does_not_verify(
    month: tuple[Path, list[Planned], Path, bytes], tmp_path: Path
) -> None:
    """Keys of another log are not the log's keys: unknown_key."""
    _, _, out, _ = month
    other = KeyRing.load_or_create(tmp_path / "other")
    check = verify_attestation(out.read_bytes(), other.public_pems())
    assert check.code == "unknown_key"


def test_window_and_unknown_upstream(
    month: tuple[Path, list[Planned], Path, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--since/--until count only lookups that started inside; an unknown upstream is refused."""
    data_dir, planned, _, _ = month
    out = tmp_path / "week.json"
    since, until = "2026-12-05T00:00:00Z", "2026-12-12T00:00:00Z"
    assert main(["audit", "attest", "--upstream", "klout", "--data-dir", str(data_dir),
                 "--policies", str(SHIPPED_POLICY), "--since", since, "--until", until,
                 "--out", str(out)]) == 0  # fmt: skip
    a = msgspec.json.decode(out.read_bytes(), type=Attestation)
    inside = [p for p in planned if p.client is not None and "2026-12-05" <= p.time < "2026-12-12"]
    assert a.lookups == len(inside)
    assert main(["audit", "attest", "--upstream", "kred", "--data-dir", str(data_dir),
                 "--policies", str(SHIPPED_POLICY)]) == 1  # fmt: skip
    assert "no upstream 'kred'" in capsys.readouterr().err
