"""``gateway audit report`` (and, below, ``attest`` and ``verify-attestation``).

Sources: ``--data-dir DIR`` (the store, exported to a temporary file and verified
with the data dir's own keys) or ``--export FILE`` (verified with
``--public-key``). Windows: ``--since 30d|24h|DATE --until DATE``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.report import Report, render_html, render_json, report_from_export
from gateway.audit.report import report_from_store as _report_from_store
from gateway.audit.signing import KeyRing, SigningKeyError
from gateway.audit.store import AuditStore, StoreError

__all__ = ["parse_moment", "register"]

_RELATIVE = re.compile(r"^(\d+)([hdw])$")


def parse_moment(text: str, *, now: float | None = None) -> str:
    """``30d``, ``24h``, ``2w`` (before now) or an ISO 8601 date/time → the records' format."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match[1]), match[2]
        hours = amount * {"h": 1, "d": 24, "w": 168}[unit]
        moment = datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(
            hours=hours
        )
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a time: {text!r} (expected 30d, 24h, 2w, 2026-11-01 or 2026-11-01T12:00Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data dir (keys and embedded store; default ./var or $GATEWAY_DATA_DIR)",
    )
    source.add_argument("--export", type=Path, help="a JSONL export file instead of the store")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("GATEWAY_DATABASE_URL"),
        help="PostgreSQL URL of a shared audit store (keys still come from --data-dir)",
    )
    parser.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="PEM public key(s) to verify --export with (repeatable)",
    )
    parser.add_argument(
        "--since", type=parse_moment, help="from this time: 30d, 24h, 2w or a date/time"
    )
    parser.add_argument("--until", type=parse_moment, help="before this time (date/time)")


def register(audit_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` (and the attestation commands) under ``gateway audit``."""
    report = audit_sub.add_parser(
        "report",
        help="a report for compliance staff: lookups, denials, neutral answers, verification",
        description="Counts lookups (one per request), not records. Prints a summary; "
        "--html, --json and --csv write the report files.",
    )
    _source_arguments(report)
    report.add_argument("--html", type=Path, help="write the HTML report here")
    report.add_argument("--json", type=Path, help="write the JSON report here")
    report.add_argument("--csv", type=Path, help="write one CSV row per lookup here")
    report.add_argument(
        "--policies",
        type=Path,
        default=Path("policies.yaml"),
        help="policy file naming the rules' actions (default ./policies.yaml, if present)",
    )
    report.set_defaults(func=cmd_report)

    attest = audit_sub.add_parser(
        "attest",
        help="a signed attestation for a vendor: use of its API against its terms",
        description="Lookups by purpose, every refusal under the vendor's banned purposes, "
        "and peak calls per second and per day against the terms, for one upstream and "
        "period; no people. Signed with the log's key and bound to a checkpoint.",
    )
    attest.add_argument("--upstream", required=True, help="upstream name, e.g. klout")
    attest.add_argument(
        "--data-dir",
        type=Path,
        help="the gateway's data dir (keys and embedded store; default ./var)",
    )
    attest.add_argument(
        "--database-url",
        default=os.environ.get("GATEWAY_DATABASE_URL"),
        help="PostgreSQL URL of a shared audit store",
    )
    attest.add_argument("--since", type=parse_moment, help="from: 30d, 24h, 2w or a date/time")
    attest.add_argument("--until", type=parse_moment, help="before this date/time")
    attest.add_argument(
        "--policies",
        type=Path,
        default=Path("policies.yaml"),
        help="the policy file with the vendor's terms (default ./policies.yaml)",
    )
    attest.add_argument("--out", type=Path, help="write here (default: standard output)")
    attest.set_defaults(func=cmd_attest)

    check = audit_sub.add_parser(
        "verify-attestation", help="check a terms attestation offline against pinned keys"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--public-key",
        type=Path,
        action="append",
        required=True,
        help="PEM file with the log's public key(s) (repeatable)",
    )
    check.set_defaults(func=cmd_verify_attestation)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _data_dir(args: argparse.Namespace) -> Path:
    return args.data_dir or Path(os.environ.get("GATEWAY_DATA_DIR", "var"))


def _public_keys(args: argparse.Namespace) -> bytes | None:
    if not args.public_key:
        return None
    return b"".join(Path(p).read_bytes() for p in args.public_key)


def open_store(args: argparse.Namespace) -> AuditStore:
    data_dir = _data_dir(args)
    if not args.database_url and not (data_dir / "audit.db").exists():
        raise StoreError(f"no audit store in {data_dir} (and no --database-url)")
    return AuditStore.open(data_dir=data_dir, url=args.database_url)


def _policy(path: Path) -> object:
    from gateway.policies.compile import compile_policy
    from gateway.policies.loader import PolicyError, read_policy

    if not path.exists():
        return None
    try:
        return compile_policy(read_policy(path))
    except PolicyError as exc:
        print(f"note: {path} has errors, rule actions unknown: {exc.lines()[0]}", file=sys.stderr)
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from gateway.policies.compile import CompiledPolicy

    policy = _policy(args.policies)
    compiled = policy if isinstance(policy, CompiledPolicy) else None
    try:
        if args.export is not None:
            if not args.public_key:
                print(
                    "note: no --public-key given; the export is counted but not verified",
                    file=sys.stderr,
                )
            report = report_from_export(
                args.export,
                public_keys=_public_keys(args),
                since=args.since,
                until=args.until,
                policy=compiled,
            )
        else:
            store = open_store(args)
            try:
                report = _report_from_store(
                    store,
                    KeyRing.load(_data_dir(args)),
                    since=args.since,
                    until=args.until,
                    policy=compiled,
                )
            finally:
                store.close()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (StoreError, OSError, ValueError) as exc:
        return _fail(f"audit.unavailable: {exc}")
    if args.html:
        _write(args.html, render_html(report).encode())
    if args.json:
        _write(args.json, render_json(report))
    if args.csv:
        _write_lookup_csv(args)
    print(summary(report))
    checked = args.export is None or bool(args.public_key)
    verification = report.verification
    return 1 if checked and verification is not None and not verification.ok else 0


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)
    print(f"wrote {path}", file=sys.stderr)


def _write_lookup_csv(args: argparse.Namespace) -> None:
    from gateway.audit.lookup_csv import write_csv
    from gateway.audit.lookups import iter_export_records, iter_store_records

    tmp = args.csv.with_name(args.csv.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as out:
        if args.export is not None:
            write_csv(iter_export_records(args.export), out, since=args.since, until=args.until)
        else:
            store = open_store(args)
            try:
                write_csv(iter_store_records(store), out, since=args.since, until=args.until)
            finally:
                store.close()
    tmp.replace(args.csv)
    print(f"wrote {args.csv}", file=sys.stderr)


def summary(report: Report) -> str:
    """The report's main figures as plain text."""
    from gateway.audit.report import human_time

    lines = [
        f"lookups {report.lookups:,} from {human_time(report.first)} to "
        f"{human_time(report.last)} ({report.people:,} people asked about)",
        "by decision: " + ", ".join(f"{d} {n:,}" for d, n in report.by_decision.items()),
        f"hiring lookups blocked: {report.hiring_blocked:,}",
        "neutral answers: " + ", ".join(f"{o} {n:,}" for o, n in report.neutralized.items()),
        "denials by rule: "
        + (", ".join(f"{r} {n:,}" for r, n in report.denials_by_rule.items()) or "none"),
        "denials by client: "
        + (", ".join(f"{c} {n:,}" for c, n in report.denials_by_client.items()) or "none"),
        "vendor throttling: "
        + (", ".join(f"{u} {n:,}" for u, n in report.throttled_by_vendor.items()) or "none")
        + "; limit refusals: "
        + (", ".join(f"{u} {n:,}" for u, n in report.limit_refusals.items()) or "none"),
        f"objections honoured: {report.objections.lookups:,} lookups",
        "policy versions: "
        + (", ".join(f"{v.version} ({v.lookups:,} lookups)" for v in report.policy_versions)
           or "none"),
    ]  # fmt: skip
    v = report.verification
    if v is not None:
        cp = v.last_checkpoint
        lines.append(
            f"verification: {v.message}"
            + (f"; last checkpoint size {cp.size:,} at {human_time(cp.time)}" if cp else "")
        )
    return "\n".join(lines)


def cmd_attest(args: argparse.Namespace) -> int:
    from gateway.audit.attest import attest_store, encode_attestation
    from gateway.policies.compile import compile_policy
    from gateway.policies.loader import PolicyError, read_policy

    try:
        policy = compile_policy(read_policy(args.policies))
    except PolicyError as exc:
        return _fail("; ".join(exc.lines()))
    if args.upstream not in policy.upstreams:
        return _fail(f"no upstream {args.upstream!r} in {args.policies}")
    try:
        store = open_store(args)
        try:
            attestation = attest_store(
                store,
                KeyRing.load(_data_dir(args)),
                upstream=args.upstream,
                policy=policy,
                since=args.since,
                until=args.until,
            )
        finally:
            store.close()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (StoreError, OSError) as exc:
        return _fail(f"audit.unavailable: {exc}")
    data = encode_attestation(attestation)
    if args.out is None:
        sys.stdout.buffer.write(data)
    else:
        _write(args.out, data)
    a = attestation
    print(
        f"{a.upstream}: {a.lookups:,} lookups, {a.vendor_calls:,} vendor calls, "
        f"{len(a.refusals_under_banned_purposes):,} refusals under banned purposes, peak "
        f"{a.peak_per_second.calls}/s (terms {a.peak_per_second.limit}) and "
        f"{a.peak_per_day.calls:,}/day (terms {a.peak_per_day.limit}); within terms: "
        f"{'yes' if a.within_terms else 'NO'}; checkpoint size {a.checkpoint.size}",
        file=sys.stderr,
    )
    return 0


def cmd_verify_attestation(args: argparse.Namespace) -> int:
    from gateway.audit.attest import verify_attestation

    try:
        pem = b"".join(Path(p).read_bytes() for p in args.public_key)
        data = args.file.read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        check = verify_attestation(data, pem)
    except ValueError as exc:
        return _fail(f"bad public key file: {exc}")
    if not check.ok:
        return _fail(str(check))
    print(str(check))
    return 0
