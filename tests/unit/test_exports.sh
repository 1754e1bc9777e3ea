#!/bin/sh
# test_exports — libkvds.so exports exactly the functions include/kvds/kvds.h
# declares, nothing more, nothing less. The list is computed from the
# header (its preprocessed text: every "kvds_<name>(" is a function
# declaration), not kept here; the library's side is what the dynamic
# linker sees (nm -D --defined-only).
#
# Usage: test_exports.sh LIBKVDS_SO KVDS_H CC NM
set -eu
lib=$1 header=$2 cc=$3 nm=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Declared: joined into one line first, so a declaration may wrap anywhere.
"$cc" -E -P -x c "$header" | tr -s ' \t\n' '  ' |
  grep -oE '(^|[^A-Za-z0-9_])kvds_[A-Za-z0-9_]+ ?\(' |
  sed -E 's/^[^k]*//; s/ ?\($//' | sort -u >"$tmp/declared"
if [ "$(wc -l <"$tmp/declared")" -lt 30 ]; then
  echo "found only $(wc -l <"$tmp/declared") functions in $header" >&2
  exit 1
fi

# Exported: every defined dynamic symbol, whatever its type, but the ones
# the toolchain adds (linker-defined section bounds, sanitizer runtime
# hooks of an instrumented build).
"$nm" -D --defined-only "$lib" | awk '{ print $NF }' |
  grep -vE '^(_init|_fini|_edata|_end|__bss_start|_+(asan|lsan|ubsan|sanitizer|odr_asan)[A-Za-z0-9_.]*)$' |
  sort -u >"$tmp/exported"
# Functions: text symbols only (a public name exported as data is wrong).
"$nm" -D --defined-only "$lib" | awk '$2 != "T" { print $NF }' |
  sort -u >"$tmp/not_text"

rc=0
if ! cmp -s "$tmp/declared" "$tmp/exported"; then
  echo "exported by $lib but not declared in kvds.h:" >&2
  comm -13 "$tmp/declared" "$tmp/exported" | sed 's/^/  /' >&2
  echo "declared in kvds.h but not exported (KVDS_API missing?):" >&2
  comm -23 "$tmp/declared" "$tmp/exported" | sed 's/^/  /' >&2
  rc=1
fi
bad=$(comm -12 "$tmp/declared" "$tmp/not_text")
if [ -n "$bad" ]; then
  echo "exported, but not as functions: $bad" >&2
  rc=1
fi
[ $rc -eq 0 ] && echo "libkvds.so exports the $(wc -l <"$tmp/declared") functions of kvds.h and nothing else"
exit $rc
