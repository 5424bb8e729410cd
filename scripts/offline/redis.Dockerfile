# Offline stand-in for the official redis image, for machines without a registry (used by
# scripts/build-images --with-services; docker-compose.yml picks it up through REDIS_IMAGE).
ARG BASE_IMAGE=chatscale-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
