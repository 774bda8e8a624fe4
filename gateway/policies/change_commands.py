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
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.audit.lookups import iter_export_records, iter_store_records
from gateway.audit.report_commands import parse_moment
from gateway.audit.store import AuditStore, StoreError
from gateway.policies.apply import StagedChange
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

    ap = sub.add_parser(
        "apply",
        help="check, test, replay and diff a new policy, then make it the active file",
    )
    ap.add_argument("file", type=Path, help="the new policy file")
    ap.add_argument(
        "--to",
        type=Path,
        default=Path("policies.yaml"),
        help="the active policy file the gateway watches (default ./policies.yaml)",
    )
    ap.add_argument(
        "--cases",
        type=Path,
        help="directory of YAML test cases (default: those the file names in settings)",
    )
    _window_arguments(ap)
    ap.add_argument(
        "--as",
        dest="actor",
        default=None,
        help="who applies the change, for the audit record (default: the login name)",
    )
    ap.add_argument("--yes", action="store_true", help="do not ask; for scripts")
    ap.add_argument(
        "--allow-loosening",
        action="store_true",
        help="apply even if callers would get more than before",
    )
    ap.set_defaults(func=cmd_apply)

    ro = sub.add_parser(
        "ropa", help="the GDPR Art. 30 record of processing, generated from the policy file"
    )
    ro.add_argument("file", nargs="?", type=Path, default=Path("policies.yaml"))
    ro.add_argument("--format", choices=("md", "html", "csv"), default="md")
    ro.add_argument("--out", type=Path, help="write here instead of standard output")
    ro.set_defaults(func=cmd_ropa)


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


def _step(number: int, title: str) -> None:
    print(f"\n{number}. {title}")


def cmd_apply(args: argparse.Namespace) -> int:
    import getpass

    from gateway.policies.apply import commit_change, stage_change

    target: Path = args.to
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"refused: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    active = _compile(target) if target.exists() else None
    if target.exists() and active is None:
        print(f"note: the active file {target} has errors itself", file=sys.stderr)
    if args.since is None and args.until is None:
        args.since = parse_moment("30d")
    staged = stage_change(
        data,
        name=str(args.file),
        active=active,
        cases_dir=args.cases,
        base=target.parent,
        records=_records(args),
        since=args.since,
        until=args.until,
        allow_loosening=args.allow_loosening,
    )
    _print_staged(staged, target)
    if staged.refused is not None:
        print(f"refused: {staged.refused}; nothing was changed", file=sys.stderr)
        return 1
    assert staged.new is not None
    if not args.yes:
        if not sys.stdin.isatty():
            print("refused: no terminal to confirm on; give --yes", file=sys.stderr)
            return 1
        answer = input(f"\nWrite {args.file} over {target}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing was changed")
            return 1
    actor = f"cli:{args.actor or getpass.getuser()}"
    try:
        commit_change(staged, data, target=target, data_dir=_data_dir(args), actor=actor)
    except OSError as exc:
        print(f"refused: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    print(
        f"\napplied {staged.new.version} to {target} as {actor}; a running gateway loads it "
        "within a second or two (GET /admin/policy shows the active version)"
    )
    return 0


def _records(args: argparse.Namespace) -> Callable[[], Iterator[tuple[int, bytes]]] | None:
    """The logged records to replay, read when called; ``None`` if there is no log."""
    if args.export is not None:
        export: Path = args.export
        return lambda: iter_export_records(export)
    data_dir = _data_dir(args)
    if not args.database_url and not (data_dir / "audit.db").exists():
        return None

    def from_store() -> Iterator[tuple[int, bytes]]:
        store = AuditStore.open(data_dir=data_dir, url=args.database_url)
        try:
            yield from iter_store_records(store)
        finally:
            store.close()

    return from_store


def _print_staged(staged: StagedChange, target: Path) -> None:
    _step(1, f"check {staged.name}")
    if staged.new is None:
        for line in staged.problems:
            print(f"   {line}")
        return
    print(f"   OK, version {staged.new.version}, {len(staged.new.rules)} rules")
    _step(2, "test cases")
    for result in staged.failed_cases:
        print("   " + result.render().replace("\n", "\n   "))
    if staged.cases:
        failed = len(staged.failed_cases)
        print(f"   {len(staged.cases) - failed} passed, {failed} failed")
    if staged.refused is not None and (staged.failed_cases or not staged.cases):
        return
    _step(3, "replay against the audit log")
    if staged.replay is not None:
        print("   " + staged.replay.render().replace("\n", "\n   "))
    else:
        print(f"   skipped: {staged.replay_skipped}")
    _step(4, f"what changes against {target}")
    for line in staged.diff:
        print(f"   - {line}")
    if not staged.diff:
        print("   no change in meaning (comments or layout only)")
    for line in staged.may_loosen:
        print(f"   ! may loosen: {line}")


def cmd_ropa(args: argparse.Namespace) -> int:
    from gateway.policies.ropa import render

    policy = _compile(args.file)
    if policy is None:
        return 1
    text = render(policy, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        from gateway.policies.apply import write_atomically

        write_atomically(args.out, text.encode())
        print(f"wrote {args.out}", file=sys.stderr)
    if policy.policy.controller is None:
        print("note: the policy has no 'controller' block; Art. 30 needs one", file=sys.stderr)
    return 0
