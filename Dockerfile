# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with its dependencies, then run it as a non-root user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md policies.yaml ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin gateway \
 && mkdir -p /srv/var && chown gateway /srv/var
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /srv
COPY policies.yaml /srv/policies.yaml
USER gateway
# Keys, the embedded audit store and issued-key hashes live here: mount a volume.
VOLUME ["/srv/var"]
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_DATA_DIR=/srv/var GATEWAY_POLICIES=/srv/policies.yaml
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
