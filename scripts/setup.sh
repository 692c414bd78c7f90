#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh Debian 12 or 13 machine (as root) for torpor:
# apt packages (gVisor runsc pinned to the tested build), .venv/ with torpor installed,
# torpor's static sandbox init, and the cached base image. Safe to run again: every step
# checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNSC_VERSION="0.0~20240729.0-4+b7"
APT_PACKAGES=(
  gcc libc6-dev musl-tools make git zstd iproute2 ca-certificates
  python3 python3-venv python3-dev
  mmdebstrap skopeo umoci docker-registry
  postgresql chromium
)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh must run as root (it installs apt packages and runs gVisor)" >&2
  exit 1
fi

. /etc/os-release
codename=${VERSION_CODENAME:-}

# --- apt -------------------------------------------------------------------------------
# runsc: the tested build is Debian 13 (trixie)'s. It is statically linked, so on Debian 12
# we add trixie's suite from the machine's own mirror at a low pin priority (nothing else
# is taken from it) and ask for that exact version.
add_trixie_suite() {
  local src=/etc/apt/sources.list.d/torpor-trixie.sources
  [[ -f $src ]] && return 0
  local uri
  uri=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
          grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}') |
        grep -v -- '-security' | head -1)
  if [[ -z $uri ]]; then
    echo "cannot find a Debian mirror in this machine's apt sources" >&2
    exit 1
  fi
  log "adding trixie suite from $uri (pinned low; only runsc is taken from it)"
  cat >"$src" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >/etc/apt/preferences.d/torpor-trixie <<EOF
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
  rm -f /var/lib/torpor/.apt-updated
}

need_apt=0
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt=1
done
installed_runsc=$(dpkg-query -W -f='${Version}' runsc 2>/dev/null || true)
[[ $installed_runsc == "$RUNSC_VERSION" ]] || need_apt=1

if ((need_apt)); then
  [[ $codename == trixie ]] || add_trixie_suite
  mkdir -p /var/lib/torpor
  log "apt-get update"
  apt-get update -qq
  log "installing apt packages: ${APT_PACKAGES[*]} runsc=$RUNSC_VERSION"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${APT_PACKAGES[@]}" "runsc=$RUNSC_VERSION" >/dev/null
  apt-mark hold runsc >/dev/null
fi

# --- python ----------------------------------------------------------------------------
# Prefer a python3 on PATH that is >= 3.11 (the system one on Debian 12 is 3.11).
PY=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null &&
     "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
[[ -n $PY ]] || { echo "need Python >= 3.11 with venv" >&2; exit 1; }

stamp=.venv/.torpor-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "creating .venv with $PY and installing torpor"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  echo "$want" >"$stamp"
else
  # The source tree may have moved (fresh clone): keep the editable install pointing here.
  .venv/bin/python -c 'import torpor' 2>/dev/null || .venv/bin/python -m pip install -q -e '.[test,bench]'
fi

# --- torpor's own parts ----------------------------------------------------------------
# Builds the static init if needed, checks runsc with a self-test sandbox, builds the base
# image once (cached under TORPOR_HOME).
.venv/bin/torpor doctor --build-base
