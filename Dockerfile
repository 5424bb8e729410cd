# chatscale autoscaler: watches shards in Redis, starts/stops shard containers through the Docker
# API and publishes the nginx configuration for the fronts. The same image runs each front:
# `autoscaler front-agent` runs nginx and applies what the autoscaler publishes.
#
#   docker build -t chatscale-autoscaler:latest .
#   docker run -v /var/run/docker.sock:/var/run/docker.sock \
#       -v ./config.yaml:/etc/chatscale/config.yaml:ro chatscale-autoscaler:latest
# Offline (no registry, no PyPI): scripts/build-images. See docs/images.md.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- deps stage: a venv with the dependencies only (rebuilt only when pyproject.toml or the
# ---- wheels change); nothing but /opt/chatscale reaches the final image, so the wheels and pip's
# ---- caches cost no space there. Dockerfile and shard_image/Dockerfile differ only in the extra.
FROM ${BASE_IMAGE} AS deps
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/chatscale
ENV PATH=/opt/chatscale/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# Extra pip options; the offline build passes "--no-index --find-links /wheels".
ARG PIP_ARGS=""
# build/wheels/ (offline build only) is optional: in a normal build the wildcard matches nothing,
# and pyproject.toml, which always exists, keeps the COPY valid. It lands in /wheels as well and
# is where the dependency list comes from.
COPY pyproject.toml build/wheel[s] /wheels/
# Only what this image's side needs: the contract's dependencies plus the "autoscaler" extra.
RUN python3 -c 'import tomllib; p = tomllib.load(open("/wheels/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["autoscaler"]))' > /tmp/requirements.txt \
    && pip install $PIP_ARGS -r /tmp/requirements.txt

# ---- project stage: the chatscale wheel, built from the source (a code change rebuilds only this
# ---- and the small layers installing it below, not the venv)
FROM deps AS project
# (an ARG ends with its stage, even for a stage built FROM another)
ARG PIP_ARGS=""
COPY pyproject.toml README.md /src/
COPY chatscale_contract /src/chatscale_contract
COPY autoscaler /src/autoscaler
COPY shard_image/shard /src/shard_image/shard
RUN pip wheel $PIP_ARGS --no-deps --wheel-dir /dist /src

# ---- final image
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# nginx: run by `autoscaler front-agent` when this image serves as a front (docker-compose.yml's
# nginx service, the stack's front service); the autoscaler itself never starts it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 nginx tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deps /opt/chatscale /opt/chatscale
COPY --from=project /dist /tmp/dist
RUN /opt/chatscale/bin/pip install --no-cache-dir --no-index --no-deps --root-user-action=ignore \
        --disable-pip-version-check /tmp/dist/*.whl \
    && /opt/chatscale/bin/pip check --disable-pip-version-check \
    && rm -rf /tmp/dist
COPY nginx_templates /app/nginx_templates
# config.yaml's nginx.template_dir is relative to the config file's folder; the link makes the
# shipped default ("nginx_templates") work for a config mounted at /etc/chatscale/config.yaml.
# The front agent's nginx.conf folder and nginx's runtime folder.
RUN mkdir -p /etc/chatscale/nginx /var/lib/chatscale/nginx \
    && ln -s /app/nginx_templates /etc/chatscale/nginx_templates
COPY config.yaml /etc/chatscale/config.yaml

ENV PATH=/opt/chatscale/bin:$PATH \
    PYTHONUNBUFFERED=1
# Runs as root on purpose: the autoscaler talks to the Docker engine through the mounted
# /var/run/docker.sock, which belongs to root (group "docker" with a host-specific gid), and
# anyone who can use that socket is root on the host anyway; a non-root user would add a gid to
# match on every host and no isolation. (As a front, nginx's workers run as nobody.)
WORKDIR /app
EXPOSE 8080 3000
# The status page's liveness endpoint, checked from inside the container: needs status.bind on
# port 8080 and on 0.0.0.0 or 127.0.0.1 (the defaults), and /healthz answering without the token.
# A front overrides it (docker-compose.yml, the stack file).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["autoscaler", "run", "--config", "/etc/chatscale/config.yaml"]
