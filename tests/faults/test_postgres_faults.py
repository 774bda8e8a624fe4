"""PostgreSQL unreachable for a few seconds under load: refusals stay on the record.

The gateway reaches the real PostgreSQL through a loopback relay (``relay.py``) that
the test cuts: open connections are reset and new ones refused, as when the database
restarts. The server itself, shared with other tests, is never stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote, urlsplit

from tests.faults.relay import Relay
from tests.faults.support import LookupLoad, export_and_verify, roomy_policy, wait_for
from tests.support.gateway import running_gateway
from tests.support.postgres import PG_URL, pg_schema

__all__ = ["pg_schema"]  # the fixture, imported for this module
HR = {"key": "demo-hr-key"}


def _through(relay: Relay, schema: str) -> str:
    url = urlsplit(PG_URL)
    user = f"{url.username}@" if url.username else ""
    options = quote(f"-csearch_path={schema}")
    return f"postgresql://{user}127.0.0.1:{relay.port}{url.path}?options={options}"


def test_policy_denials_while_postgres_is_down_are_recorded_once_it_returns(
    tmp_path: Path, pg_schema: str
) -> None:
    """HR lookups are denied by policy with or without a store. While PostgreSQL is
    unreachable the denials still answer 403 policy.denied, and each one's record
    goes on the backlog and is written once the database is back: every request id
    an HR caller got has its ``lookup`` record in the verified export."""
    url = urlsplit(PG_URL)
    with (
        Relay((url.hostname or "127.0.0.1", url.port or 5432)) as relay,
        running_gateway(
            tmp_path / "var",
            policies=roomy_policy(tmp_path),
            database_url=_through(relay, pg_schema),
        ) as gw,
        LookupLoad(gw.url, threads=3, params=HR) as load,
    ):
        wait_for(lambda: len(load.snapshot()) >= 20, 5, "denials before the fault")
        with relay.cut():
            cut_at = time.monotonic()
            time.sleep(2.0)
            restored_at = time.monotonic()
        wait_for(lambda: sum(a.at > restored_at for a in load.snapshot()) >= 20, 10, "load after")
        load.stop()
        runtime = gw.state.runtime
        assert runtime is not None
        wait_for(lambda: len(runtime.backlog) == 0, 10, "the backlog to drain")
        answers = load.snapshot()
        during = [a for a in answers if cut_at + 0.2 < a.at < restored_at]
        assert len(during) >= 10, "the load saw too few answers while PostgreSQL was cut"
        assert {(a.status, a.code) for a in answers} == {(403, "policy.denied")}
        log = export_and_verify(gw.url)
    assert log.result.ok, str(log.result)
    missing = [a.request_id for a in answers if log.kinds_of(a.request_id) != ["lookup"]]
    kinds = [log.kinds_of(m) for m in missing]  # [] is lost, ["lookup", "lookup"] doubled
    assert missing == [], f"{len(missing)} of {len(answers)} denials: {kinds}"
    for answer in during:
        [record] = log.by_request(answer.request_id)
        assert (record.client, record.error, record.status) == ("ats", "policy.denied", 403)
