# Redis for the compose stack where the public redis image cannot be pulled (scripts/images.sh
# builds it on the Debian base it makes; T1_REDIS_IMAGE selects it). Debian bookworm's
# redis-server (7.0) serves the same commands the services use (streams, transactions).
ARG BASE_IMAGE=debian:bookworm-20251117-slim
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
