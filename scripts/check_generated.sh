#!/usr/bin/env bash
# Regenerate generated/ and fail when it differs from what is committed:
# generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/gen_protos.py >/dev/null
# Compared with the index (the same as the last commit on a clean clone), so a
# regenerated tree that is staged but not yet committed passes (pre-commit).
changed="$(git diff --name-only -- generated; git ls-files --others --exclude-standard -- generated)"
if [ -n "$changed" ]; then
  echo "generated/ is out of date with protos/: run 'make protos' and commit the result" >&2
  echo "$changed" >&2
  git --no-pager diff --stat -- generated >&2
  exit 1
fi
echo "generated/ is up to date"
