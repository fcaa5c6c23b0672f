# intercom-sso-gateway container image (the Helm chart's default image).
#
#   docker build -t intercom-sso-gateway:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v "$PWD/config:/etc/sso-gateway/config:ro" \
#     -v "$PWD/policies:/etc/sso-gateway/policies:ro" -p 8080:8080 intercom-sso-gateway:0.1.0
#
# Two stages: the builder installs the gateway and its dependencies into a virtualenv
# from wheels only (no compiler in either stage); the runtime stage copies that
# virtualenv onto a slim Python image and runs as an unprivileged user (UID/GID 10001,
# as the chart's securityContext expects) with nothing writable outside /tmp and
# /var/lib/sso-gateway, so it works with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sso-gateway
ENV PATH=/opt/sso-gateway/bin:$PATH
# SAML needs lxml and xmlsec built against the same libxml2: these two wheels agree
# (lxml 5.x with xmlsec 1.3.17 does not).  Wheels only, so nothing is compiled.
RUN pip install --only-binary=:all: "lxml==6.1.3" "xmlsec==1.3.17"
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY gateway ./gateway
# the gateway is pure Python: its wheel is built here, every dependency is a wheel
RUN pip install --only-binary=:all: "setuptools>=68" wheel \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip install --only-binary=:all: /wheels/*.whl \
 && python -m compileall -q /opt/sso-gateway

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="intercom-sso-gateway" \
      org.opencontainers.image.description="Identity gateway for SIP intercom and IP-PBX dashboards" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sso \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sso-gateway \
      --shell /usr/sbin/nologin sso \
 && mkdir -p /var/lib/sso-gateway /etc/sso-gateway/config /etc/sso-gateway/policies \
 && chown 10001:10001 /var/lib/sso-gateway && chmod 0700 /var/lib/sso-gateway
COPY --from=build /opt/sso-gateway /opt/sso-gateway
ENV PATH=/opt/sso-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSO_GATEWAY_CONFIG=/etc/sso-gateway/config/config.yaml
WORKDIR /var/lib/sso-gateway
USER 10001:10001
EXPOSE 8080
# For plain Docker; Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/.sso/healthz', timeout=2)"]
ENTRYPOINT ["sso-gateway"]
CMD ["serve"]
