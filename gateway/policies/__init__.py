"""The policy file compliance staff write, and the engine that enforces it.

A policy goes through these modules in order:

- ``model.py``: the shape of ``policies.yaml``; ``LookupContext`` and ``Decision``;
- ``loader.py``: YAML to model, every mistake reported as ``FILE:LINE:COL: message``;
  the policy version (a digest of what the policy says);
- ``compile.py``: rules into a frozen index (``CompiledPolicy``);
- ``evaluate.py``: ``evaluate(context, policy) -> Decision``, pure;
- ``reload.py``: ``PolicyHolder``, hot reload that keeps the last good policy;
- ``testing.py``, ``schema.py``, ``commands.py``: ``gateway policy test|schema|check|explain``.
"""
