"""How long one policy decision takes with 10, 100 and 1,000 rules.

Run: .venv/bin/python bench/policy_evaluate.py [--decisions N] [--repeats R]

The rules are spread over 50 clients, 8 kinds, 20 upstreams, a 60-purpose
hierarchy, a few routes and outcomes, with a few attribute conditions, the way a
large organisation's policy would be. Each decision is ``evaluate(context, policy)``
on a mix of contexts, including the shipped policy's typical lookups. The target
is under 5 µs per decision at 1,000 rules (reference/performance.md: the whole
gateway must add about 17 µs per request).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import get_args

from gateway.policies.compile import CompiledPolicy, compile_policy
from gateway.policies.evaluate import evaluate
from gateway.policies.model import (
    OUTCOMES,
    ActionName,
    Client,
    Limit,
    LookupContext,
    Neutral,
    Policy,
    Rule,
    Terms,
    Upstream,
    When,
)

ROUTES = (
    "/v2/user.json/{kloutId}",
    "/v2/user.json/{kloutId}/score",
    "/v2/identity.json/tw/{id}",
    "/1/klout.json",
)
ROUTE_PATTERNS = (*ROUTES, "/v2/user.json/*", "/v2/**")
KINDS = ("crm", "hr", "support", "marketing", "analytics", "finance", "security", "ops")


def vocabulary() -> list[str]:
    purposes = []
    for top in ("employment", "marketing", "sales", "essential", "analytics", "finance"):
        purposes.append(top)
        for mid in ("a", "b", "c"):
            purposes.append(f"{top}.{mid}")
            for leaf in ("x", "y"):
                purposes.append(f"{top}.{mid}.{leaf}")
    return purposes


def build(
    rule_count: int, rng: random.Random, memo_size: int
) -> tuple[CompiledPolicy, list[LookupContext]]:
    purposes = vocabulary()
    clients = [
        Client(id=f"client-{i}", kind=KINDS[i % len(KINDS)], purposes=rng.sample(purposes, 6))
        for i in range(50)
    ]
    upstreams = [
        Upstream(
            name=f"up-{i}",
            adapter="klout",
            base_url="http://example.invalid",
            neutral=Neutral(score=40),
            terms=Terms(banned_purposes=["marketing.a"], source="terms"),
        )
        for i in range(20)
    ]
    rules = []
    for i in range(rule_count):
        action = rng.choice(get_args(ActionName))
        when = When(
            client=rng.choice([None, None, rng.choice(clients).id]),
            client_kind=rng.choice([None, None, None, rng.choice(KINDS)]),
            purpose=rng.choice([None, rng.choice(purposes), rng.sample(purposes, 2)]),
            upstream=rng.choice([None, rng.choice(upstreams).name]),
            route=rng.choice([None, None, None, rng.choice(ROUTE_PATTERNS)]),
            outcome=rng.choice([None, None, None, rng.choice(OUTCOMES)]),
            attributes={"jurisdiction": "EU"} if rng.random() < 0.02 else None,
        )
        rules.append(
            Rule(
                id=f"rule-{i}",
                reason="r",
                source="s",
                when=when,
                action=action,
                fields=["score"] if action == "redact" else None,
                limit=Limit(calls_per_second=10) if action == "limit" else None,
            )
        )
    policy = Policy(
        purposes={p: p for p in purposes}, clients=clients, upstreams=upstreams, rules=rules
    )
    compiled = compile_policy(policy, memo_size=memo_size)
    contexts = []
    for _ in range(256):
        client = rng.choice(clients)
        contexts.append(
            LookupContext(
                client=client.id,
                client_kind=client.kind,
                purpose=rng.choice(client.purposes),
                upstream=rng.choice(upstreams).name,
                route=rng.choice(ROUTES),
                attributes={"jurisdiction": "EU"} if rng.random() < 0.1 else {},
                outcome=rng.choice([None, "found", "missing"]),
            )
        )
    return compiled, contexts


def measure(policy: CompiledPolicy, contexts: list[LookupContext], decisions: int) -> float:
    """Microseconds per decision over ``decisions`` evaluations."""
    rounds = max(1, decisions // len(contexts))
    start = time.perf_counter_ns()
    for _ in range(rounds):
        for context in contexts:
            evaluate(context, policy)
    elapsed = time.perf_counter_ns() - start
    return elapsed / (rounds * len(contexts)) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'rules':>6}  {'compile ms':>10}  {'µs/decision':>11}  {'best':>6}  "
        f"{'cold µs':>8}  {'rules matched':>13}"
    )
    for count in (10, 100, 1000):
        rng = random.Random(20120413 + count)
        start = time.perf_counter()
        policy, contexts = build(count, rng, memo_size=65536)
        compile_ms = (time.perf_counter() - start) * 1000
        measure(policy, contexts, 10_000)  # warm: the decision table fills on first use
        runs = [measure(policy, contexts, args.decisions) for _ in range(args.repeats)]
        # Cold: the decision table turned off, every decision built from scratch.
        cold_policy, _ = build(count, random.Random(20120413 + count), memo_size=0)
        cold = min(measure(cold_policy, contexts, args.decisions // 4) for _ in range(3))
        matched = statistics.mean(len(evaluate(c, policy).matched) for c in contexts)
        print(
            f"{count:>6}  {compile_ms:>10.1f}  {statistics.median(runs):>11.2f}  "
            f"{min(runs):>6.2f}  {cold:>8.2f}  {matched:>9.1f} avg"
        )


if __name__ == "__main__":
    main()
