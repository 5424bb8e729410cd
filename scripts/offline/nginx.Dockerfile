# Offline stand-in for the official nginx image, for machines without a registry (used by
# scripts/build-images --with-services; docker-compose.yml picks it up through NGINX_IMAGE).
ARG BASE_IMAGE=chatscale-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 3000
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
