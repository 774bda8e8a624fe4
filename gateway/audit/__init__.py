"""The signed, append-only audit log: record, log, store, export, verify.

Read in this order:

* ``record.py``      :class:`AuditRecord` and its canonical bytes (the Merkle leaf).
* ``log.py``         :class:`AuditLog`: fail-closed ``append`` with group commit in
                     one writer thread; checkpoints; crash recovery.
* ``merkle.py``      RFC 6962 leaf/node hashing, frontier, compact ranges, proofs.
* ``checkpoint.py``  the signed note ``origin / size / root / time``.
* ``signing.py``     Ed25519 key ring in ``<data_dir>/keys``, key ids, rotation.
* ``store.py``       SQLModel tables on SQLite or PostgreSQL; the batch writer; sequencing.
* ``export.py``      streaming JSONL export (the format an auditor implements) and CSV.
* ``verify.py``      the offline verifier: one failure code per step.
* ``subject.py``     subject access by pseudonym, with inclusion proofs.
* ``proofs.py``      RFC 6962 consistency and inclusion proofs from the store.
* ``note.py``        C2SP signed notes: checkpoint notes, cosignatures, vkeys.
* ``witness.py``     ``gateway witness``: an independent C2SP tlog-witness.
* ``witnessing.py``  the gateway pushing each checkpoint to its witnesses.
* ``subject_report.py`` one person's records with inclusion proofs, checked offline.
* ``retention.py``   pruning bodies older than ``audit: retention``, hashes kept.
* ``commands.py``    ``gateway audit export|verify|subject`` and ``gateway keys ...``.
"""
