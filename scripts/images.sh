#!/usr/bin/env bash
# Builds the CPU images (verifier, generator-cpu, trainer-cpu) with podman, with no network use
# inside the builds' pip: the wheels are prepared on the host first and mounted into each build.
#
#   bash scripts/images.sh            # idempotent: a step whose inputs did not change is skipped
#
# Steps, each cached under $T1_IMAGE_CACHE (default ~/.cache/t1-images):
#   1. podman, runc and debootstrap from apt when missing (Debian/Ubuntu, as root);
#   2. a containers.conf for this engine here (below: why each line);
#   3. a Debian bookworm base image made with debootstrap (public images cannot be pulled here),
#      unless T1_PYTHON_IMAGE names a base to use instead (e.g. python:3.11.14-slim-bookworm);
#   4. a wheelhouse: every pinned dependency of ".[cpu]" as a wheel, built with the host's pip
#      (which finds the CPU torch where the machine keeps it), keyed by pyproject.toml;
#   5. the three images from docker/Dockerfile, installing only from the wheelhouse. The
#      wheelhouse is a build mount, never a layer, so the images do not carry it.
# Environment for later podman/compose calls: `source <(bash scripts/images.sh --env)`.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${T1_IMAGE_CACHE:-$HOME/.cache/t1-images}
CONF=$CACHE/containers.conf
BASE=localhost/t1-base:bookworm
TAG=${T1_TAG:-latest}
log() { echo "images: $*" >&2; }

env_lines() {
    echo "export CONTAINERS_CONF=$CONF"
    # compose through the Docker API: no buildx/BuildKit image can be pulled here
    echo "export COMPOSE_BAKE=false DOCKER_BUILDKIT=0"
    [ -n "${T1_PYTHON_IMAGE:-}" ] || echo "export T1_REDIS_IMAGE=localhost/t1-redis:bookworm"
}
if [ "${1:-}" = "--env" ]; then env_lines; exit 0; fi
mkdir -p "$CACHE"

# 1. the engine
# dnsname: podman 4.3's CNI networks resolve service names (redis, trainer) only with this
# plugin; without it every service fails to reach Redis by name
packages="podman runc debootstrap uidmap slirp4netns golang-github-containernetworking-plugin-dnsname"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" > /dev/null || missing+=("$tool"); done
[ -e /usr/lib/cni/dnsname ] || missing+=(dnsname)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null \
        || { log "needs ${missing[*]} (apt-get install $packages, as root)"; exit 1; }
    log "installing ${missing[*]} (apt)"
    # shellcheck disable=SC2086
    { apt-get install -y --no-install-recommends $packages \
        || { apt-get update && apt-get install -y --no-install-recommends $packages; }; } \
        > "$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log" >&2; exit 1; }
fi

# 2. the engine's settings here
cat > "$CONF.new" <<EOF
[engine]
# crun refuses this machine's hybrid cgroup layout; runc runs
runtime = "runc"
# no systemd to log to or to manage cgroups
events_logger = "file"
cgroup_manager = "cgroupfs"
[containers]
# podman's default rlimits (1048576) exceed what this machine lets a container set, and every
# start then fails on setrlimit: nofile at the hard limit works, nproc only well under the
# kernel's pid_max (here 32000 did, 32768 and above did not)
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=16384:16384"]
EOF
mv "$CONF.new" "$CONF"
export CONTAINERS_CONF=$CONF

# 3. the base image
python_image=${T1_PYTHON_IMAGE:-$BASE}
if [ "$python_image" = "$BASE" ] && ! podman image exists "$BASE"; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    root=$CACHE/rootfs
    rm -rf "$root"
    log "debootstrap bookworm from $mirror (about a minute or two)"
    # python3-venv: the images' /opt/venv; python3-dev: Python.h for the op DeepSpeed compiles
    # at run time; passwd: useradd for the unprivileged user
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,passwd,ca-certificates \
        bookworm "$root" "$mirror" > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" > /dev/null
    rm -rf "$root"
fi

# 4. the wheelhouse, rebuilt when the dependencies change
wheels=$CACHE/wheels
want=$(cat pyproject.toml scripts/images.sh | sha256sum | cut -c1-16)
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$want" ]; then
    pip=${PIP:-.venv/bin/pip}
    [ -x "$pip" ] || pip="python3 -m pip"
    log "wheelhouse for .[cpu] in $wheels (first time: a few minutes)"
    rm -rf "$wheels" && mkdir -p "$wheels"
    # the build backend too: the image builds the project itself with --no-index; and what the
    # image's Python needs beyond the host's: Debian bookworm's is 3.11.2, for which redis wants
    # async-timeout (below 3.11.3)
    $pip wheel --quiet -w "$wheels" ".[cpu]" "setuptools>=68" wheel "async-timeout>=4.0.3" > "$CACHE/wheels.log" 2>&1 \
        || { grep -v "is ignored: it is neither" "$CACHE/wheels.log" | tail -20 >&2; exit 1; }
    rm -f "$wheels"/t1_services-*.whl  # the images install the project from their own copy
    echo "$want" > "$wheels/.stamp"
fi

# 5. the images (podman's layer cache skips what did not change); Redis's from Debian's package
if [ "$python_image" = "$BASE" ]; then
    log "building t1-redis:bookworm"
    podman build --quiet --format docker -f docker/redis.Dockerfile --build-arg BASE_IMAGE="$BASE" -t localhost/t1-redis:bookworm \
        docker > "$CACHE/build-redis.log" 2>&1 || { tail -30 "$CACHE/build-redis.log" >&2; exit 1; }
fi
for target in verifier generator-cpu trainer-cpu; do
    log "building t1-$target:$TAG"
    # --format docker: an OCI image drops HEALTHCHECK, and compose's service_healthy waits on it
    podman build --quiet --format docker -f docker/Dockerfile --target "$target" -t "t1-$target:$TAG" \
        --build-arg PYTHON_IMAGE="$python_image" --build-arg PIP_WHEELS=/wheels \
        -v "$wheels:/wheels:ro" . > "$CACHE/build-$target.log" 2>&1 \
        || { tail -30 "$CACHE/build-$target.log" >&2; exit 1; }
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "t1-(verifier|generator-cpu|trainer-cpu):$TAG" >&2
