"""A privacy-preserving gateway for people-scoring APIs.

Callers change only the base URL and key of their existing Klout-style client.
A request meets these primitives, in this order:

1. **Client** (``clients.py``): the caller's gateway key names an internal system,
   its kind (``crm``, ``hr``, ...) and the purposes it is registered for.
2. **Lookup context** (``policies/model.py``): client, purpose (``X-Purpose`` or the
   client's default), upstream, route template and subject pseudonyms.
3. **Person** (``identity.py``): the identity graph links the pseudonyms of one
   person's identifiers; objections, issued neutral ids and subject access follow
   the person, not one identifier.
4. **Policy** (``policies/``): ``policies.yaml``, compiled once into an index.
5. **Decision** (``policies/evaluate.py``): a pure function of context and policy;
   deny wins, every matched rule is listed.
6. **Upstream adapter** (``upstreams/``): knows the API's routes, what "missing"
   and "throttled" look like, and how to write a neutral answer in its own shape.
7. **Audit record** (``audit/record.py``): committed durably before the upstream
   is called and again, with the outcome, before the caller is answered.
8. **Checkpoint** (``audit/log.py``): the Merkle tree head over all records,
   signed with Ed25519, so an export can be verified offline.

The request path itself reads top-down in ``proxy.py``; ``app.py`` assembles it.
"""

__version__ = "0.1.0"
