#!/usr/bin/env bash
# The system packages of fixfleet's image (Debian bookworm; run as root by cluster/Dockerfile).
#
#   cluster/image/install-system.sh                   install them (WITH_NODE=0: without node and npm)
#   cluster/image/install-system.sh --print-packages  print the list, one a line; installs nothing
#
#   git              mirrors, checkouts and pushes (fixfleet/workspace/git.py)
#   bubblewrap       the sandbox of the agents and of every command run for a repository
#                    (fixfleet/workspace/sandbox.py); not setuid, it needs user namespaces
#                    (cluster/GUIDE.md: the agents' sandbox)
#   socat            the sandbox's bridge to the platform's proxies (model, egress)
#   ca-certificates  TLS to the git hosts, the model API and the package registries
#   bash, wget, grep KubeRay starts Ray with `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`, and its
#                    default readiness/liveness probes exec
#                    bash -c 'wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz
#                             | grep success'
#                    (and :8265/api/gcs_healthz on the head, :8000/-/healthz for Serve on workers;
#                    ray-operator/controllers/ray/utils/constant.go, BaseWgetHealthCommand): without
#                    wget a healthy pod is never Ready and is restarted by its liveness probe
#   nodejs, npm      JavaScript/TypeScript repositories: `npm ci` and their test runners
#                    (Debian's Node.js 18; npm brings node-gyp, libnode-dev and Debian's python3:
#                    by far the largest part of this list; WITH_NODE=0 leaves them out)
set -euo pipefail

WITH_NODE=${WITH_NODE:-1}
packages=(ca-certificates git bubblewrap socat bash wget grep)
case $WITH_NODE in
  1) packages+=(nodejs npm) ;;
  0) ;;
  *) echo "install-system.sh: WITH_NODE must be 1 or 0, not '$WITH_NODE'" >&2; exit 2 ;;
esac

if [[ ${1:-} == --print-packages ]]; then
  printf '%s\n' "${packages[@]}"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--print-packages]" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-system.sh: run it as root (it is the image's build step; it changes the system)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin \
  /var/log/apt/* /var/log/dpkg.log

# What the platform and KubeRay call must be there, on the PATH of a login shell too.
for tool in git bwrap socat bash wget grep; do
  if ! command -v "$tool" >/dev/null; then
    echo "install-system.sh: $tool is missing after the install" >&2
    exit 1
  fi
done
if [[ -u $(command -v bwrap) ]]; then
  echo "install-system.sh: bwrap is setuid; fixfleet expects the unprivileged bubblewrap" >&2
  exit 1
fi
git --version
bwrap --version
socat -V | sed -n 2p
wget --version | head -n 1
if [[ $WITH_NODE == 1 ]]; then
  echo "node $(node --version), npm $(npm --version)"
fi
