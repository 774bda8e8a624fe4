"""``gateway policy replay|apply|ropa``: see what a change does before it goes live.

- ``replay NEW.yaml``: re-decide the logged lookups under ``NEW.yaml`` and the active
  file (:mod:`gateway.policies.replay`); exit 1 on any loosening unless
  ``--allow-loosening``.
- ``apply NEW.yaml``: check, test cases, replay summary, plain-words diff; then,
  after a yes (or ``--yes``), write it over the active file atomically. The running
  gateway picks it up and its ``policy.load`` record names who applied it.
- ``ropa``: the GDPR Art. 30 record of processing, from the policy file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.audit.lookups import iter_export_records, iter_store_records
from gateway.audit.report_commands import parse_moment
from gateway.audit.store import AuditStore, StoreError
from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.loader import PolicyError, read_policy
from gateway.policies.replay import ReplaySummary, replay

__all__ = ["register"]


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data dir with the audit store (default ./var or $GATEWAY_DATA_DIR)",
    )
    source.add_argument("--export", type=Path, help="a JSONL export instead of the store")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("GATEWAY_DATABASE_URL"),
        help="PostgreSQL URL of a shared audit store",
    )
    parser.add_argument(
        "--since", type=parse_moment, default=None, help="from: 30d, 24h, 2w or a date/time"
    )
    parser.add_argument("--until", type=parse_moment, help="before this date/time")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay``, ``apply`` and ``ropa`` under ``gateway policy``."""
    rp = sub.add_parser(
        "replay", help="what a changed policy would have done to the logged lookups"
    )
    rp.add_argument("file", type=Path, help="the proposed policy file")
    rp.add_argument(
        "--current",
        type=Path,
        default=Path("policies.yaml"),
        help="the active policy file to compare with (default ./policies.yaml)",
    )
    _window_arguments(rp)
    rp.add_argument(
        "--allow-loosening",
        action="store_true",
        help="exit 0 even if callers would get more than before",
    )
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp.set_defaults(func=cmd_replay)


def _compile(path: Path) -> CompiledPolicy | None:
    try:
        return compile_policy(read_policy(path))
    except PolicyError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def _data_dir(args: argparse.Namespace) -> Path:
    data_dir: Path | None = args.data_dir
    return data_dir or Path(os.environ.get("GATEWAY_DATA_DIR", "var"))


def run_replay(args: argparse.Namespace, old: CompiledPolicy, new: CompiledPolicy) -> ReplaySummary:
    """Replay the window of the store or export named by ``args``."""
    if args.export is not None:
        return replay(
            iter_export_records(args.export), old, new, since=args.since, until=args.until
        )
    data_dir = _data_dir(args)
    if not args.database_url and not (data_dir / "audit.db").exists():
        raise StoreError(f"no audit store in {data_dir} (and no --database-url)")
    store = AuditStore.open(data_dir=data_dir, url=args.database_url)
    try:
        return replay(iter_store_records(store), old, new, since=args.since, until=args.until)
    finally:
        store.close()


def cmd_replay(args: argparse.Namespace) -> int:
    old, new = _compile(args.current), _compile(args.file)
    if old is None or new is None:
        return 1
    try:
        summary = run_replay(args, old, new)
    except (StoreError, OSError, ValueError) as exc:
        print(f"audit.unavailable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import msgspec

        sys.stdout.write(msgspec.json.format(msgspec.json.encode(summary)).decode() + "\n")
    else:
        print(summary.render())
    if summary.loosening and not args.allow_loosening:
        print(
            "refused: this change loosens the policy (give --allow-loosening if that is meant)",
            file=sys.stderr,
        )
        return 1
    return 0
