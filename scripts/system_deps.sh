#!/usr/bin/env bash
# Debian packages that some tests drive as real processes, installed when missing:
# `make test` runs this first. Without root (or password-less sudo) and apt-get it
# installs nothing and says so; the tests that need a missing package then skip, each
# with the command that installs it.
set -euo pipefail

# command to look for -> Debian package
declare -A PACKAGES=(
  [pgbouncer]=pgbouncer
)

missing=()
for command in "${!PACKAGES[@]}"; do
  if ! command -v "$command" >/dev/null && [ ! -x "/usr/sbin/$command" ]; then
    missing+=("${PACKAGES[$command]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system-deps: not installing ${missing[*]} (needs root); their tests will skip" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: no apt-get to install ${missing[*]}; their tests will skip" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
