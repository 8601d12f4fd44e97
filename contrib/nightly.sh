#!/usr/bin/env bash
# The nightly drop-folder job (README.md, "Nightly syncs"). For every CSV in
# the drop folder:
#   - a file still being written is skipped until the next night: when the
#     exporter writes `<file>.done` markers (any file in the folder has one),
#     only files with their marker are taken; otherwise a file whose size
#     changed within NIGHTLY_SETTLE_SECONDS (default 5) is left;
#   - one ledger per file (`<file>.ledger.jsonl`): a file without one is
#     imported with `run`; a file with one is continued with `retry` (the
#     night after a failure or a crash); a file with the same name but new
#     contents (tonight's full export over last night's) gets a new ledger,
#     the old one kept aside;
#   - with a state file (third argument, or THULIUM_STATE), rows are matched
#     to the customers that exist (the mapping's [customer] match) and only
#     what changed since the last night is sent;
#   - `report --json` lands next to each file (`<file>.report.json`).
# NIGHTLY_ARGS adds flags to every run and retry (pacing: "--rate 20").
# Exits with the night's worst exit code (2 unusable input, 3 aborted).
#
#   THULIUM_URL=https://acme.thulium.com THULIUM_USER=importer \
#   THULIUM_PASSWORD_FILE=/etc/thulium/pw nightly.sh /srv/drop /etc/thulium/crm.toml /var/lib/thulium/acme.sqlite
set -u
drop=$1
mapping=$2
state=${3:-${THULIUM_STATE:-}}
bin=${THULIUM_IMPORT:-thulium-import}
settle=${NIGHTLY_SETTLE_SECONDS:-5}
state_args=()
[ -n "$state" ] && state_args=(--state "$state")
read -r -a extra <<< "${NIGHTLY_ARGS:-}"
state_args+=("${extra[@]}")
markers=0
compgen -G "$drop/*.csv.done" >/dev/null && markers=1
declare -A size_before
for csv in "$drop"/*.csv; do
  [ -e "$csv" ] && size_before[$csv]=$(stat -c %s "$csv")
done
[ "$markers" = 0 ] && [ "${#size_before[@]}" -gt 0 ] && sleep "$settle"
worst=0
for csv in "$drop"/*.csv; do
  [ -e "$csv" ] || continue
  if [ "$markers" = 1 ]; then
    if [ ! -e "$csv.done" ]; then
      echo "nightly: $csv: no $csv.done marker yet: left for the next night" >&2
      continue
    fi
  elif [ "$(stat -c %s "$csv")" != "${size_before[$csv]:-}" ]; then
    echo "nightly: $csv: still being written: left for the next night" >&2
    continue
  fi
  ledger="$csv.ledger.jsonl"
  if [ -e "$ledger" ]; then
    recorded=$(head -n 1 "$ledger" | sed -n 's/.*"source_sha256":"\([0-9a-f]*\)".*/\1/p')
    current=$(sha256sum "$csv" | cut -d ' ' -f 1)
    if [ "$recorded" = "$current" ]; then
      "$bin" retry "$ledger" "${state_args[@]}" --no-progress --log-format json
    else
      "$bin" run "$csv" --mapping "$mapping" --ledger "$ledger" --force-new-ledger "${state_args[@]}" --no-progress --log-format json
    fi
  else
    "$bin" run "$csv" --mapping "$mapping" --ledger "$ledger" "${state_args[@]}" --no-progress --log-format json
  fi
  code=$?
  [ -e "$ledger" ] && "$bin" report "$ledger" --json > "$csv.report.json"
  [ "$code" -gt "$worst" ] && worst=$code
done
exit "$worst"
