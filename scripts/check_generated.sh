#!/usr/bin/env bash
# Regenerate generated/ and fail when it differs from what is committed:
# generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/gen_protos.py >/dev/null
if [ -n "$(git status --porcelain -- generated)" ]; then
  echo "generated/ is out of date with protos/: run 'make protos' and commit the result" >&2
  git status --porcelain -- generated >&2
  git --no-pager diff --stat -- generated >&2
  exit 1
fi
echo "generated/ is up to date"
