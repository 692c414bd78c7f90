#!/usr/bin/env bash
# debian-mirror.sh [CODENAME]: prints the Debian archive mirror this machine's apt uses.
#
# One rule for its two callers: scripts/setup.sh (which adds trixie's suite from this
# mirror for runsc, before any Python environment exists, hence a shell script) and the
# base image build (torpor.sandbox.images.apt_mirror, which hands it to mmdebstrap).
#
# The sources are read by apt itself (`apt-get indextargets`), so every layout apt accepts
# is understood the way apt understands it: deb822 `*.sources` files, one-line
# `sources.list` / `*.list` files, comments, `Enabled: no`, options in brackets, several
# URIs or suites in one stanza. APT_CONFIG is honoured as apt honours it (the tests point it
# at fixture layouts). The mirror is the first enabled binary ("deb") source of one of the
# Debian archive's own suites: CODENAME (default: this machine's), CODENAME-updates,
# CODENAME-backports, or a stable/oldstable/testing alias; never a -security suite (the
# security archive carries no other suite), never a third-party suite, never a cdrom.
# TORPOR_DEBIAN_MIRROR, when set, is the answer without looking.
#
# Exit status 0 with the URI (no trailing slash) on stdout; 1 with one line on stderr
# saying what is wrong and what to do.
set -uo pipefail

if [[ -n ${TORPOR_DEBIAN_MIRROR:-} ]]; then
  printf '%s\n' "${TORPOR_DEBIAN_MIRROR%/}"
  exit 0
fi

codename=${1:-}
if [[ -z $codename ]]; then
  codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
fi
if ! command -v apt-get >/dev/null; then
  echo "apt-get is not installed: torpor's set-up needs a Debian machine (or set TORPOR_DEBIAN_MIRROR)" >&2
  exit 1
fi

if ! targets=$(apt-get indextargets --no-release-info \
                 --format '$(TARGET_OF) $(IDENTIFIER) $(RELEASE) $(REPO_URI)' 2>&1); then
  why=$(printf '%s' "$targets" | grep -E '^E:' | head -1)
  echo "apt cannot read its sources (${why:-apt-get indextargets failed}); fix them, or set TORPOR_DEBIAN_MIRROR to a Debian mirror" >&2
  exit 1
fi

# Two passes: the release's own suite is the surest sign of the Debian archive; the
# -updates/-backports suites and the aliases live on the same archive.
for pass in exact related; do
  while read -r target ident release uri; do
    [[ $target == deb && $ident == Packages && -n $uri ]] || continue
    [[ $uri == cdrom:* ]] && continue
    case $pass:$release in
      exact:"$codename") ;;
      related:"$codename"-updates | related:"$codename"-backports) ;;
      related:stable | related:oldstable | related:testing | related:unstable) ;;
      *) continue ;;
    esac
    printf '%s\n' "${uri%/}"
    exit 0
  done <<<"$targets"
done

echo "no Debian mirror for ${codename:-this release} found in apt's sources" \
     "(only security, third-party or disabled entries); add one, e.g." \
     "'deb http://deb.debian.org/debian ${codename:-bookworm} main', or set TORPOR_DEBIAN_MIRROR" >&2
exit 1
