# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with its locked dependencies, then run it as a non-root user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.txt ./requirements.txt
COPY pyproject.toml README.md policies.yaml ./
COPY policy-tests ./policy-tests
COPY gateway ./gateway
# The runtime dependencies at exactly the versions of the lock (hash-checked), then
# the gateway's own wheel (it carries the shipped policy, its cases and the schema),
# built with the lock's setuptools and wheel: build isolation would fetch the newest.
RUN pip download --no-cache-dir --no-deps --require-hashes -r requirements.txt -d /wheels \
 && pip install --no-cache-dir --no-index --find-links /wheels setuptools wheel \
 && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
# uid 10001: not root, and not a uid a host is likely to give a real user.
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin gateway \
 && mkdir -p /srv/var /srv/policies \
 && chown gateway:gateway /srv/var /srv/policies
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels score-gateway && rm -rf /wheels
WORKDIR /srv
# The policy directory belongs to the gateway user: `gateway clients add` and
# `gateway objections add` save the policy by writing a new file and renaming it
# over the old one, which needs a writable directory, not just a writable file.
COPY --chown=gateway:gateway policies.yaml /srv/policies/policies.yaml
COPY --chown=gateway:gateway policy-tests /srv/policies/policy-tests
USER gateway
# Keys, the embedded audit store, issued-key hashes and the pseudonym secret live in
# /srv/var; the policy and its test cases in /srv/policies. Mount volumes on both.
VOLUME ["/srv/var", "/srv/policies"]
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_DATA_DIR=/srv/var \
    GATEWAY_POLICIES=/srv/policies/policies.yaml
EXPOSE 8080
# Follows GATEWAY_PORT, so `-e GATEWAY_PORT=9000` keeps the container healthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
