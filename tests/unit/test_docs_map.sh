#!/bin/sh
# test_docs_map: every file of src/ is named in docs/architecture.md (the
# module map), so the map cannot fall behind the tree.
# Usage: test_docs_map.sh <repository root>
root=${1:?usage: test_docs_map.sh ROOT}
doc="$root/docs/architecture.md"
[ -f "$doc" ] || { echo "no $doc"; exit 1; }
missing=0
for f in $(cd "$root" && find src -type f | sort); do
  b=$(basename "$f")
  # the name as a word, literally (a name used twice in src/ is matched by
  # the one mention)
  if ! grep -qwF -- "$b" "$doc"; then
    echo "not in docs/architecture.md: $f"
    missing=$((missing + 1))
  fi
done
if [ "$missing" -ne 0 ]; then
  echo "$missing file(s) of src/ missing from the module map"
  exit 1
fi
echo "docs/architecture.md names every file of src/"
