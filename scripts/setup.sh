#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh Debian 12 or 13 machine (as root) for torpor:
# apt packages (gVisor runsc pinned to the tested build), .venv/ with torpor installed,
# torpor's static sandbox init, runsc's self-test and the cached base image. Safe to run
# again: every step checks whether it is already done.
#
# Every step says what it does and how long it took; a long one says every 20 s that it is
# still going and what it is at. A step that fails names itself, the command, the line,
# and shows the command's last output lines; where the cause is the machine, one line says
# what to do. Settings: TORPOR_DEBIAN_MIRROR (the mirror for trixie's suite on Debian 12,
# instead of the one apt uses), TORPOR_REPLACE_RUNSC=1 (replace a runsc of another version).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

RUNSC_VERSION="0.0~20240729.0-4+b7"
APT_PACKAGES=(
  gcc libc6-dev musl-tools make git zstd iproute2 ca-certificates
  python3 python3-venv python3-dev
  mmdebstrap skopeo umoci docker-registry
  postgresql chromium
)
TRIXIE_SOURCE=/etc/apt/sources.list.d/torpor-trixie.sources
TRIXIE_PIN=/etc/apt/preferences.d/torpor-trixie

# --- reporting ---------------------------------------------------------------------------
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { # one line on what is wrong with the machine and what to do; no trace
  printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2
  exit 1
}

SETUP_T0=$SECONDS
STEP="start"
STEP_T0=$SECONDS
LOG_DIR=$(mktemp -d /tmp/torpor-setup.XXXXXX)
STEP_LOG=$LOG_DIR/start.log
: >"$STEP_LOG"

step() { # step NAME WHAT: starts a step
  STEP=$1 STEP_T0=$SECONDS STEP_LOG=$LOG_DIR/$1.log
  : >"$STEP_LOG"
  say "$1: $2"
}
step_done() { say "$STEP: ${1:-done} in $((SECONDS - STEP_T0)) s"; }

KEEP_LOGS=0
show_failure() { # show_failure WHAT: names the step and shows the last output of its command
  KEEP_LOGS=1
  printf '\033[1;31m[setup] FAILED\033[0m in step "%s": %s\n' "$STEP" "$1" >&2
  if [[ -s $STEP_LOG ]]; then
    printf '[setup] its last output lines (all of it: %s):\n' "$STEP_LOG" >&2
    tail -n 25 "$STEP_LOG" | sed 's/^/    /' >&2
  fi
}
on_error() { # the ERR trap: anything that failed without a step's own message
  local status=$1 line=$2 cmd=$3
  trap - ERR
  ((BASH_SUBSHELL == 0)) || exit "$status" # reported once, by the script itself
  show_failure "line $line of scripts/setup.sh, \`$cmd\`, exited with status $status"
  exit "$status"
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
trap 'jobs -p | xargs -r kill 2>/dev/null; ((KEEP_LOGS)) || rm -rf "$LOG_DIR"' EXIT

run() { # run CMD...: a command of the current step, its output kept in the step's log;
  # every 20 s a line says it is still running and what it printed last
  local pid status=0 waited=0
  printf '+ %s\n' "$*" >>"$STEP_LOG"
  "$@" </dev/null >>"$STEP_LOG" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if ((++waited % 20 == 0)) && kill -0 "$pid" 2>/dev/null; then
      say "  ... $STEP, $waited s: $(tail -n 1 "$STEP_LOG" | cut -c1-100)"
    fi
  done
  wait "$pid" || status=$?
  if ((status != 0)); then
    show_failure "\`$*\` exited with status $status"
    exit "$status"
  fi
}

# --- the machine -------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] ||
  die "scripts/setup.sh must run as root (it installs apt packages and runs gVisor): sudo scripts/setup.sh"
[[ -r /etc/os-release ]] || die "no /etc/os-release: torpor's set-up supports Debian 12 (bookworm) and 13 (trixie)"
. /etc/os-release
codename=${VERSION_CODENAME:-}
case $codename in
  bookworm | trixie) ;;
  *) die "this is ${PRETTY_NAME:-an unknown system} (codename '${codename}'): torpor's set-up supports Debian 12 (bookworm) and 13 (trixie)" ;;
esac

# --- runsc already here? -----------------------------------------------------------------
# torpor runs the first runsc on PATH. One of another version is the user's to replace,
# not ours to overwrite silently: it may serve Docker or containerd on this machine.
installed_runsc=$(dpkg-query -W -f='${Status}|${Version}' runsc 2>/dev/null || true)
if [[ $installed_runsc == *" ok installed|"* ]]; then # "install" or "hold"
  installed_runsc=${installed_runsc#*|}
else
  installed_runsc="" # never installed, or removed with its configuration kept
fi
version_of() { local v; v=$("$1" --version 2>/dev/null | head -1) || true; echo "${v:-version unknown}"; }
on_path=$(command -v runsc || true)
if [[ -n $on_path && $(realpath "$on_path") != /usr/bin/runsc ]]; then
  [[ ${TORPOR_REPLACE_RUNSC:-} == 1 ]] ||
    die "another runsc comes first on PATH: $on_path ($(version_of "$on_path")), and torpor runs the first one; move it away (mv $on_path $on_path.orig) or run again with TORPOR_REPLACE_RUNSC=1, which does that"
  say "runsc: moving $on_path to $on_path.orig (TORPOR_REPLACE_RUNSC=1)"
  mv "$on_path" "$on_path.orig"
elif [[ -n $on_path && -z $installed_runsc ]]; then
  [[ ${TORPOR_REPLACE_RUNSC:-} == 1 ]] ||
    die "$on_path is a runsc that no Debian package installed ($(version_of "$on_path")); torpor needs Debian's $RUNSC_VERSION: move it away (mv $on_path $on_path.orig) or run again with TORPOR_REPLACE_RUNSC=1, which installs the package over it"
fi
if [[ -n $installed_runsc && $installed_runsc != "$RUNSC_VERSION" ]]; then
  [[ ${TORPOR_REPLACE_RUNSC:-} == 1 ]] ||
    die "runsc $installed_runsc is installed; torpor is tested with $RUNSC_VERSION (other builds fail its self-test): run again with TORPOR_REPLACE_RUNSC=1 to replace it (apt-get install --allow-downgrades runsc=$RUNSC_VERSION, held)"
  say "runsc: replacing $installed_runsc with $RUNSC_VERSION (TORPOR_REPLACE_RUNSC=1)"
fi

# --- apt -----------------------------------------------------------------------------------
# runsc: the tested build is Debian 13 (trixie)'s. It is statically linked, so on Debian 12
# trixie's suite is added from the machine's own mirror at a low pin priority (nothing else
# is taken from it) and that exact version asked for. The source and the pin are each
# written when missing or different, so a half-finished earlier run is completed.
write_if_changed() { # write_if_changed FILE CONTENT: returns 0 if it wrote
  [[ -f $1 && $(cat "$1") == "$2" ]] && return 1
  printf '%s\n' "$2" >"$1"
}
ensure_trixie_suite() {
  local mirror source
  if [[ -f $TRIXIE_SOURCE ]]; then # keep the mirror an earlier run chose
    mirror=$(sed -n 's/^URIs: *//p' "$TRIXIE_SOURCE" | head -1)
  fi
  if [[ -z ${mirror:-} ]]; then
    mirror=$(bash src/torpor/sandbox/debian-mirror.sh "$codename" 2>"$STEP_LOG") ||
      die "$(cat "$STEP_LOG")"
  fi
  source="Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  if write_if_changed "$TRIXIE_SOURCE" "$source"; then
    say "apt: added trixie's suite from $mirror ($TRIXIE_SOURCE; pinned low, only runsc is taken from it)"
  fi
  write_if_changed "$TRIXIE_PIN" "Package: *
Pin: release n=trixie
Pin-Priority: 100" && say "apt: pinned trixie low ($TRIXIE_PIN)"
  return 0
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *" ok installed" ]] || missing+=("$p")
done
[[ $installed_runsc == "$RUNSC_VERSION" ]] || missing+=("runsc=$RUNSC_VERSION")

if ((${#missing[@]})); then
  step apt "installing ${#missing[@]} packages: ${missing[*]} (a few minutes on a fresh machine)"
  [[ $codename == trixie ]] || ensure_trixie_suite
  # Another apt (unattended-upgrades, a second set-up) may hold dpkg's lock: wait for it
  # for up to 10 minutes instead of failing at once.
  run apt-get -o DPkg::Lock::Timeout=600 update
  # (read whole, then matched: `apt-cache ... | grep -q` fails under pipefail whenever grep
  # exits before apt-cache has written its last line)
  known=$(apt-cache madison runsc 2>>"$STEP_LOG" || true)
  if [[ $known != *" $RUNSC_VERSION "* ]]; then
    # apt-get update only warns about a source it could not fetch: show what it said
    grep -E '^(W|E|Err):' "$STEP_LOG" | head -n 6 | sed 's/^/    apt-get update said: /' >&2 || true
    die "apt knows no runsc $RUNSC_VERSION after apt-get update (trixie's suite: ${TRIXIE_SOURCE}); check that its mirror answers and carries trixie, or set TORPOR_DEBIAN_MIRROR and remove $TRIXIE_SOURCE"
  fi
  apt-mark unhold runsc >/dev/null 2>&1 || true
  run env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
    --no-install-recommends --allow-downgrades "${APT_PACKAGES[@]}" "runsc=$RUNSC_VERSION"
  apt-mark hold runsc >/dev/null
  step_done
else
  say "apt: all packages present (runsc $RUNSC_VERSION)"
fi

# --- python --------------------------------------------------------------------------------
# Prefer a python3 on PATH that is >= 3.11 (the system one on Debian 12 is 3.11).
PY=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null &&
     "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
[[ -n $PY ]] || die "torpor needs Python >= 3.11 with venv (python3 and python3-venv on Debian 12 and 13)"

stamp=.venv/.torpor-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  step venv "creating .venv with $PY and installing torpor with its test and benchmark extras"
  [[ -x .venv/bin/python ]] || run "$PY" -m venv .venv
  run .venv/bin/python -m pip install --upgrade pip
  run .venv/bin/python -m pip install -e '.[test,bench]'
  echo "$want" >"$stamp"
  step_done
elif ! .venv/bin/python -c 'import torpor' 2>/dev/null; then
  # The source tree moved (a fresh clone next to an old .venv): point the editable install here.
  step venv "re-pointing torpor's editable install at this tree"
  run .venv/bin/python -m pip install -e '.[test,bench]'
  step_done
else
  say "venv: .venv is up to date"
fi

# --- torpor's own parts --------------------------------------------------------------------
# torpor doctor builds the static init if needed, checks runsc with a self-test sandbox and
# builds the base image once (cached under /var/lib/torpor/images); it prints each check as
# it finishes, with its time, and the base image build's progress.
step doctor "torpor-init, runsc's self-test and the base image (building it takes a few minutes the first time)"
if ! .venv/bin/torpor doctor --build-base; then
  STEP_LOG=/dev/null
  show_failure "\`.venv/bin/torpor doctor --build-base\` found a problem (the FAIL line above says which)"
  exit 1
fi
step_done
say "set-up finished in $((SECONDS - SETUP_T0)) s"
