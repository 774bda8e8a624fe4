"""``gateway audit ...`` and ``gateway keys ...``: export, verify, subject access, keys.

Every command returns an exit code: 0 for success, 1 for a failed verification
or a refused operation, 2 for bad arguments. Failures print one line on stderr,
e.g. ``FAIL line 17: reordered: record seq 9 follows seq 11``.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from gateway.audit.export import export_jsonl, fresh_checkpoint
from gateway.audit.lookup_csv import write_csv
from gateway.audit.lookups import iter_store_records
from gateway.audit.progress import LineCounter, ProgressBar, counted
from gateway.audit.pseudonym import KEY_FILE, Pseudonymizer
from gateway.audit.signing import KeyRing, SigningKeyError
from gateway.audit.store import AuditStore, StoreError
from gateway.audit.subject import subject_records, with_inclusion_proofs
from gateway.audit.verify import verify_export


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` and ``keys`` commands to the main CLI."""
    audit = subparsers.add_parser("audit", help="export, verify and search the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    export = audit_sub.add_parser(
        "export", help="write a signed JSONL export (or CSV, not verifiable)"
    )
    _store_arguments(export)
    export.add_argument("--out", type=Path, required=True, help="file to write ('-' = stdout)")
    export.add_argument("--since", type=_timestamp, help="records at or after this time (RFC 3339)")
    export.add_argument("--until", type=_timestamp, help="records before this time (RFC 3339)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    export.add_argument(
        "--records",
        action="store_true",
        help="CSV only: one row per record instead of one row per lookup",
    )
    export.set_defaults(func=cmd_export)

    verify = audit_sub.add_parser("verify", help="check an export offline against pinned keys")
    verify.add_argument("file", type=Path)
    verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        required=True,
        help="PEM file with one or more public keys (repeat for several files)",
    )
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    verify.set_defaults(func=cmd_verify)

    from gateway.audit import report_commands

    report_commands.register(audit_sub)

    subject = audit_sub.add_parser("subject", help="every record about one person (JSON lines)")
    _store_arguments(subject)
    subject.add_argument("--upstream", required=True, help="upstream name, e.g. klout")
    subject.add_argument("--subject", required=True, help="the person's identifier there")
    subject.add_argument(
        "--namespace",
        help="only this identifier namespace (e.g. twitter_screen_name); default: every "
        "namespace the upstream's adapter uses for such an identifier",
    )
    subject.add_argument(
        "--policies",
        type=Path,
        default=Path("policies.yaml"),
        help="the policy file naming the upstream (default ./policies.yaml)",
    )
    subject.add_argument(
        "--proofs", action="store_true", help="add inclusion proofs against a fresh checkpoint"
    )
    subject.set_defaults(func=cmd_subject)

    keys = subparsers.add_parser("keys", help="checkpoint signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, func, text in (
        ("generate", cmd_keys_generate, "create the first signing key"),
        ("rotate", cmd_keys_rotate, "make a new active key; old public keys are kept"),
        ("public", cmd_keys_public, "print every public key (PEM) for verifiers"),
    ):
        p = keys_sub.add_parser(name, help=text)
        _data_dir_argument(p)
        p.set_defaults(func=func)


def _data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("GATEWAY_DATA_DIR", "var")),
        help="keys and the embedded audit store (default ./var, or $GATEWAY_DATA_DIR)",
    )


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir_argument(parser)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("GATEWAY_DATABASE_URL"),
        help="PostgreSQL URL of a shared audit store (default: SQLite in the data dir)",
    )


def _timestamp(text: str) -> str:
    """Any ISO 8601 time → the records' own format, so string order is time order."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _open_store(args: argparse.Namespace) -> AuditStore:
    data_dir: Path = args.data_dir
    if not args.database_url and not (data_dir / "audit.db").exists():
        raise StoreError(f"no audit store in {data_dir} (and no --database-url)")
    return AuditStore.open(data_dir=data_dir, url=args.database_url)


def cmd_export(args: argparse.Namespace) -> int:
    try:
        store = _open_store(args)
        try:
            if args.format == "csv":
                print(
                    "note: CSV carries no hashes or signatures; it cannot be verified",
                    file=sys.stderr,
                )
                bar = _export_bar(args, store)
                rows = counted(iter_store_records(store), bar)
                options = {"raw_records": args.records, "since": args.since, "until": args.until}
                if str(args.out) == "-":
                    count = write_csv(rows, sys.stdout, **options)
                else:
                    with args.out.open("w", newline="", encoding="utf-8") as text_out:
                        count = write_csv(rows, text_out, **options)
                if bar is not None:
                    bar.finish()
                what = "records" if args.records else "lookups"
                print(f"exported {count} {what} to {args.out}", file=sys.stderr)
                return 0
            keyring = KeyRing.load(args.data_dir)
            bar = _export_bar(args, store)
            if str(args.out) == "-":
                target: IO[bytes] = sys.stdout.buffer
                seal = export_jsonl(
                    store, keyring, _watched(target, bar), since=args.since, until=args.until
                )
            else:
                tmp = args.out.with_name(args.out.name + ".partial")
                with tmp.open("wb") as out:
                    seal = export_jsonl(
                        store, keyring, _watched(out, bar), since=args.since, until=args.until
                    )
                    out.flush()
                    os.fsync(out.fileno())
                tmp.replace(args.out)
            if bar is not None:
                bar.finish()
        finally:
            store.close()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (StoreError, OSError) as exc:
        return _fail(f"audit.unavailable: {exc}")
    print(
        f"exported tree size {seal.size} ({seal.lines + 1} lines), root {seal.root}, "
        f"key {seal.key_id} to {args.out}",
        file=sys.stderr,
    )
    return 0


def _export_bar(args: argparse.Namespace, store: AuditStore) -> ProgressBar | None:
    force = {"auto": None, "always": True, "never": False}[args.progress]
    return ProgressBar.for_terminal(store.head().size, "exporting", force=force)


def _watched(out: IO[bytes], bar: ProgressBar | None) -> IO[bytes]:
    """``out``, advancing ``bar`` per line written (about one per record)."""
    return out if bar is None else LineCounter(out, bar)  # type: ignore[return-value]


def _verify_progress(args: argparse.Namespace) -> bool:
    """A bar on a terminal, for any file: a person waiting wants to see it move."""
    if args.quiet or args.progress == "never":
        return False
    return args.progress == "always" or sys.stderr.isatty()


def cmd_verify(args: argparse.Namespace) -> int:
    pem = b""
    for path in args.public_key:
        try:
            pem += Path(path).read_bytes()
        except OSError as exc:
            return _fail(f"cannot read public key {path}: {exc.strerror}")
    try:
        result = verify_export(args.file, pem, progress=_verify_progress(args))
    except ValueError as exc:
        return _fail(f"bad public key file: {exc}")
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    if not result.ok:
        return _fail(str(result))
    print(str(result))
    return 0


def cmd_subject(args: argparse.Namespace) -> int:
    key_path: Path = args.data_dir / KEY_FILE
    if not key_path.exists():
        return _fail(f"no subject key {key_path}: no records can name anyone")
    pseudonymizer = Pseudonymizer.load_or_create(args.data_dir)
    if args.namespace:
        pseudonyms = [pseudonymizer.pseudonym(args.namespace, args.subject)]
    else:
        from gateway.policies.loader import PolicyError, read_policy
        from gateway.upstreams.registry import subject_pseudonyms

        try:
            policy = read_policy(args.policies).policy
        except PolicyError as exc:
            return _fail("; ".join(exc.lines()))
        upstream = next((u for u in policy.upstreams if u.name == args.upstream), None)
        if upstream is None:
            return _fail(f"no upstream {args.upstream!r} in {args.policies}")
        pseudonyms = subject_pseudonyms(upstream, pseudonymizer, args.subject)
    try:
        store = _open_store(args)
        try:
            entries = list(
                subject_records(
                    store, pseudonyms, pseudonymizer.committer(), upstream=args.upstream
                )
            )
            if args.proofs:
                checkpoint = fresh_checkpoint(store, KeyRing.load(args.data_dir))
                entries = with_inclusion_proofs(store, entries, checkpoint)
                sys.stdout.buffer.write(msgspec.json.encode(checkpoint) + b"\n")
        finally:
            store.close()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except StoreError as exc:
        return _fail(f"audit.unavailable: {exc}")
    for entry in entries:
        sys.stdout.buffer.write(msgspec.json.encode(entry) + b"\n")
    print(f"{len(entries)} records", file=sys.stderr)
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    try:
        ring = KeyRing.generate(args.data_dir)
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    print(f"created signing key {ring.key_id} in {ring.directory}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    try:
        old = KeyRing.load(args.data_dir)
        new = old.rotate()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    print(
        f"active signing key is now {new.key_id} (was {old.key_id}); a running gateway "
        "picks it up at restart"
    )
    return 0


def cmd_keys_public(args: argparse.Namespace) -> int:
    try:
        ring = KeyRing.load(args.data_dir)
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    sys.stdout.buffer.write(ring.public_pems())
    return 0
