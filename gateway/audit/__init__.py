"""The signed, append-only audit log: record, log, store, export, verify."""
