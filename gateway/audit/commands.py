"""``gateway audit ...`` and ``gateway keys ...``: export, verify, subject access, keys.

Every command returns an exit code: 0 for success, 1 for a failed verification
or a refused operation, 2 for bad arguments. Failures print one line on stderr,
e.g. ``FAIL line 17: reordered: record seq 9 follows seq 11``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from gateway.audit.checkpoint import checkpoint_from_note, checkpoint_note
from gateway.audit.export import ExportError, export_jsonl, fresh_checkpoint
from gateway.audit.graph import IdentityStore
from gateway.audit.lookup_csv import write_csv
from gateway.audit.lookups import iter_store_records
from gateway.audit.note import ED25519, NoteError, WitnessKey, load_witness_keys, vkey
from gateway.audit.progress import LineCounter, ProgressBar, counted
from gateway.audit.pseudonym import (
    KEY_FILE,
    SECRET_ENV,
    SECRET_FILE_ENV,
    PseudonymKeyError,
    load_pseudonymizer,
)
from gateway.audit.signing import KeyRing, SigningKeyError, fingerprint, load_public_keys
from gateway.audit.store import AuditStore, StoreError
from gateway.audit.subject import subject_records, with_inclusion_proofs
from gateway.audit.subject_report import (
    SubjectReport,
    build_report,
    encode_report,
    render_html,
    verify_report,
)
from gateway.audit.verify import TreeHead, check_extends, verify_export
from gateway.errors import GatewayError


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
        "--witnessed",
        action="store_true",
        help="end at the newest checkpoint a witness cosigned (for verify --min-witnesses)",
    )
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
    earlier = verify.add_mutually_exclusive_group()
    earlier.add_argument(
        "--previous",
        type=Path,
        metavar="OLD.jsonl",
        help="an earlier export: prove FILE extends it (RFC 6962 consistency)",
    )
    earlier.add_argument(
        "--trusted-checkpoint",
        type=Path,
        metavar="NOTE",
        help="a checkpoint note kept from before (gateway audit checkpoint): prove FILE extends it",
    )
    verify.add_argument(
        "--witness-key",
        type=Path,
        action="append",
        default=[],
        help="a witness's vkey file (repeat for several); its cosignatures must verify",
    )
    verify.add_argument(
        "--min-witnesses",
        type=int,
        help="valid witness cosignatures the final checkpoint needs (default 1 with "
        "--witness-key, else 0)",
    )
    verify.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    verify.set_defaults(func=cmd_verify)

    report = audit_sub.add_parser(
        "verify-subject", help="check a subject report offline against pinned keys"
    )
    report.add_argument("report", type=Path)
    report.add_argument("--public-key", type=Path, action="append", required=True)
    report.add_argument("--witness-key", type=Path, action="append", default=[])
    report.add_argument("--min-witnesses", type=int)
    report.set_defaults(func=cmd_verify_subject)

    prune = audit_sub.add_parser(
        "prune", help="drop the bodies of records older than the retention (hashes kept)"
    )
    _store_arguments(prune)
    prune.add_argument(
        "--policies",
        type=Path,
        default=Path("policies.yaml"),
        help="the policy file whose `audit: retention` applies (default ./policies.yaml)",
    )
    prune.add_argument("--retention", help="override it, e.g. 400d")
    prune.set_defaults(func=cmd_prune)

    checkpoint = audit_sub.add_parser(
        "checkpoint", help="print the latest checkpoint as a C2SP tlog-checkpoint signed note"
    )
    _store_arguments(checkpoint)
    checkpoint.set_defaults(func=cmd_checkpoint)

    from gateway.audit import report_commands

    report_commands.register(audit_sub)

    subject = audit_sub.add_parser("subject", help="every record about one person (JSON lines)")
    _store_arguments(subject)
    subject.add_argument("--upstream", required=True, help="upstream name, e.g. klout")
    subject.add_argument(
        "--subject",
        required=True,
        action="append",
        help="the person's identifier there; repeat for every identifier of the same person",
    )
    subject.add_argument(
        "--namespace",
        help="only this identifier namespace (e.g. twitter_screen_name); default: every "
        "namespace the upstream's adapter uses for such an identifier",
    )
    subject.add_argument(
        "--policies",
        type=Path,
        default=None,  # filled in from the settings: GATEWAY_POLICIES, else ./policies.yaml
        help="the policy file naming the upstream (default ./policies.yaml)",
    )
    subject.add_argument(
        "--proofs", action="store_true", help="add inclusion proofs against a fresh checkpoint"
    )
    subject.add_argument(
        "--out",
        type=Path,
        help="write a signed subject report (JSON, with inclusion proofs) to this file and a "
        "page for the person beside it (.html)",
    )
    subject.set_defaults(func=cmd_subject)

    keys = subparsers.add_parser("keys", help="checkpoint signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, func, text in (
        ("generate", cmd_keys_generate, "create the first signing key"),
        ("rotate", cmd_keys_rotate, "make a new active key; old public keys are kept"),
        ("public", cmd_keys_public, "print every key id, fingerprint and PEM for verifiers"),
    ):
        p = keys_sub.add_parser(name, help=text)
        (_store_arguments if name == "public" else _data_dir_argument)(p)
        p.set_defaults(func=func)
        if name == "public":
            p.add_argument(
                "--vkey",
                action="store_true",
                help="print the C2SP vkey of each key instead (for witnesses' --log-key); "
                "creates the audit store if there is none yet, since the vkey names its origin",
            )


def _data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        # None: filled in by the CLI from the settings (flag, GATEWAY_DATA_DIR, default)
        default=None,
        help="keys and the embedded audit store (default ./var, or $GATEWAY_DATA_DIR)",
    )


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir_argument(parser)
    parser.add_argument(
        "--database-url",
        default=None,  # filled in from the settings: GATEWAY_DATABASE_URL
        help="PostgreSQL URL of a shared audit store (default: SQLite in the data dir)",
    )
    parser.add_argument(
        "--pseudonym-secret-file",
        type=Path,
        default=None,
        help="the replicas' pseudonym secret (or GATEWAY_PSEUDONYM_SECRET[_FILE]); "
        "default: the data dir's key",
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
                    store,
                    keyring,
                    _watched(target, bar),
                    since=args.since,
                    until=args.until,
                    witnessed=args.witnessed,
                )
            else:
                tmp = args.out.with_name(args.out.name + ".partial")
                with tmp.open("wb") as out:
                    seal = export_jsonl(
                        store,
                        keyring,
                        _watched(out, bar),
                        since=args.since,
                        until=args.until,
                        witnessed=args.witnessed,
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
    except ExportError as exc:
        return _fail(f"audit.unwitnessed: {exc}")
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
        keys = load_public_keys(pem)
    except ValueError as exc:
        return _fail(f"bad public key file: {exc}")
    witnesses: list[WitnessKey] = []
    for path in args.witness_key:
        try:
            witnesses += load_witness_keys(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, NoteError) as exc:
            return _fail(f"bad witness key file {path}: {exc}")
    minimum = args.min_witnesses if args.min_witnesses is not None else min(1, len(witnesses))
    if minimum > len({w.name for w in witnesses}):
        return _fail(f"--min-witnesses {minimum} needs that many --witness-key witnesses")
    progress = _verify_progress(args)
    old: TreeHead | None = None
    if args.previous is not None:
        try:
            earlier = verify_export(args.previous, keys, progress=progress)
        except OSError as exc:
            return _fail(f"cannot read {args.previous}: {exc.strerror}")
        if not earlier.ok:
            return _fail(f"{args.previous}: {earlier}")
        assert earlier.origin is not None
        assert earlier.root is not None
        old = TreeHead(earlier.origin, earlier.size, earlier.root, str(args.previous))
    elif args.trusted_checkpoint is not None:
        try:
            trusted, _ = checkpoint_from_note(args.trusted_checkpoint.read_bytes(), keys)
        except OSError as exc:
            return _fail(f"cannot read {args.trusted_checkpoint}: {exc.strerror}")
        except NoteError as exc:
            return _fail(f"{args.trusted_checkpoint}: {exc}")
        old = TreeHead(trusted.origin, trusted.size, trusted.root, str(args.trusted_checkpoint))
    try:
        result = verify_export(
            args.file,
            keys,
            progress=progress,
            witnesses=witnesses,
            min_witnesses=minimum,
            watch=None if old is None else old.size,
        )
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    if not result.ok:
        return _fail(str(result))
    extension = None
    if old is not None:
        extension = check_extends(old, result, args.file, args.previous)
        if not extension.ok:
            return _fail(str(extension))
    print(str(result))
    for key_id, print_ in zip(result.key_ids, result.fingerprints, strict=True):
        print(f"trusted key {key_id} {print_}")
    if witnesses:
        print(f"witnessed by {', '.join(result.witnesses) or 'none'}")
    if extension is not None:
        print(str(extension))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from gateway.audit.log import AuditLog
    from gateway.audit.retention import prune_expired
    from gateway.policies.loader import PolicyError, parse_duration, read_policy

    text = args.retention
    if text is None:
        try:
            text = read_policy(args.policies).policy.audit.retention
        except PolicyError as exc:
            return _fail("; ".join(exc.lines()))
        if text is None:
            print(f"no `audit: retention` in {args.policies}: nothing is pruned", file=sys.stderr)
            return 0
    seconds = parse_duration(text)
    if seconds is None:
        return _fail(f"not a duration: {text!r} (write e.g. 400d)")

    async def run() -> tuple[int, int] | None:
        store = _open_store(args)
        audit = AuditLog(store, KeyRing.load(args.data_dir))
        try:
            await audit.start()
            try:
                return await prune_expired(
                    audit, store, seconds, actor="cli:prune", retention_text=text
                )
            finally:
                await audit.close()
        finally:
            store.close()

    try:
        pruned = asyncio.run(run())
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except (StoreError, GatewayError) as exc:
        return _fail(f"audit.unavailable: {exc}")
    if pruned is None:
        print(f"no record is older than {text}", file=sys.stderr)
    else:
        print(f"pruned records seq {pruned[0]}..{pruned[1] - 1} (older than {text}); "
              "their hashes stay, exports show the range as pruned", file=sys.stderr)  # fmt: skip
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    try:
        store = _open_store(args)
        try:
            latest = store.latest_checkpoint()
            if latest is None:
                return _fail("audit.empty: the log has no checkpoint yet")
            checkpoint = latest[0]
            cosignatures = store.cosignatures(checkpoint.size, checkpoint.size)
        finally:
            store.close()
        keyring = KeyRing.load(args.data_dir)
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except StoreError as exc:
        return _fail(f"audit.unavailable: {exc}")
    key = keyring.public_keys.get(checkpoint.key_id)
    if key is None:
        return _fail(f"audit.unknown_key: no public key {checkpoint.key_id} in {args.data_dir}")
    note = checkpoint_note(checkpoint, key, cosignatures.get(checkpoint.size, []))
    sys.stdout.buffer.write(note)
    return 0


def cmd_subject(args: argparse.Namespace) -> int:
    key_path: Path = args.data_dir / KEY_FILE
    secret = (
        args.pseudonym_secret_file
        or os.environ.get(SECRET_FILE_ENV)
        or (os.environ.get(SECRET_ENV))
    )
    if not secret and not key_path.exists():
        return _fail(f"no subject key {key_path}: no records can name anyone")
    try:
        pseudonymizer = load_pseudonymizer(args.data_dir, args.pseudonym_secret_file)
    except PseudonymKeyError as exc:
        return _fail(f"audit.pseudonym_key_invalid: {exc}")
    pseudonyms: list[str] = []
    if args.namespace:
        pseudonyms = [pseudonymizer.pseudonym(args.namespace, s) for s in args.subject]
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
        for identifier in args.subject:
            pseudonyms += subject_pseudonyms(upstream, pseudonymizer, identifier)
    pseudonyms = list(dict.fromkeys(pseudonyms))
    try:
        store = _open_store(args)
        try:
            # A person is the unit: every identifier linked to the one given.
            pseudonyms = IdentityStore(store.engine).expand(pseudonyms)
            if args.out is not None:
                report = build_report(
                    store,
                    KeyRing.load(args.data_dir),
                    pseudonymizer.committer(),
                    pseudonyms,
                    args.upstream,
                )
                _write_report(args.out, report)
                return 0
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
    except (StoreError, OSError) as exc:
        return _fail(f"audit.unavailable: {exc}")
    for entry in entries:
        sys.stdout.buffer.write(msgspec.json.encode(entry) + b"\n")
    print(f"{len(entries)} records", file=sys.stderr)
    return 0


def _write_report(out: Path, report: SubjectReport) -> None:
    page = out.with_name(out.stem + ".html") if out.suffix == ".json" else Path(f"{out}.html")
    for path, data in ((out, encode_report(report)), (page, render_html(report).encode())):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)
    witnessed = report.checkpoint.count("\u2014") - 1
    print(
        f"{len(report.records)} records with inclusion proofs to tree size "
        f"{report.checkpoint.split(chr(10))[1]} ({witnessed} witness cosignatures"
        f"{f', {report.omitted_v1} format-1 records left out' if report.omitted_v1 else ''}) "
        f"in {out} and {page}",
        file=sys.stderr,
    )


def cmd_verify_subject(args: argparse.Namespace) -> int:
    try:
        keys = load_public_keys(b"".join(Path(p).read_bytes() for p in args.public_key))
        witnesses: list[WitnessKey] = []
        for path in args.witness_key:
            witnesses += load_witness_keys(Path(path).read_text(encoding="utf-8"))
        data = args.report.read_bytes()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return _fail(f"cannot use the arguments: {exc}")
    minimum = args.min_witnesses if args.min_witnesses is not None else min(1, len(witnesses))
    verdict = verify_report(data, keys, witnesses, minimum)
    if not verdict.ok:
        return _fail(str(verdict))
    print(str(verdict))
    print(f"trusted key {verdict.key_id} {verdict.fingerprint}")
    if witnesses:
        print(f"witnessed by {', '.join(verdict.witnesses) or 'none'}")
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
    """Every key, active last: a ``#`` line with its id and fingerprint, then its PEM.
    The output is itself a valid ``--public-key`` file (the ``#`` lines are skipped)."""
    origin = ""
    try:
        ring = KeyRing.load(args.data_dir)
        if args.vkey:  # named after the log's origin: create the store if it is new
            store = AuditStore.open(data_dir=args.data_dir, url=args.database_url)
            origin = store.origin
            store.close()
    except SigningKeyError as exc:
        return _fail(f"{exc.code}: {exc.detail}")
    except StoreError as exc:
        return _fail(f"audit.unavailable: {exc}")
    ids = [*sorted(k for k in ring.public_keys if k != ring.key_id), ring.key_id]
    for key_id in ids:
        key = ring.public_keys[key_id]
        if args.vkey:
            print(vkey(origin, ED25519, key))
            continue
        state = "active" if key_id == ring.key_id else "retired"
        sys.stdout.write(f"# key {key_id} {fingerprint(key)} ({state})\n")
        sys.stdout.write(ring.public_pem(key_id).decode())
    return 0
