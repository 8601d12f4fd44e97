#!/usr/bin/env bash
# The nightly drop-folder job from README.md ("Nightly drops"), run as is by
# tests/retry_cli.rs. One ledger per file: a file without a ledger is
# imported with `run`; a file with one is continued with `retry` (the night
# after a failure or a crash). Each file's `report --json` lands next to it
# for monitoring. Exits with the worst exit code of the night.
#
#   THULIUM_URL=https://acme.thulium.com THULIUM_USER=importer \
#   THULIUM_PASSWORD=... nightly.sh /srv/drop mappings/crm.toml
set -u
drop=$1
mapping=$2
bin=${THULIUM_IMPORT:-thulium-import}
worst=0
for csv in "$drop"/*.csv; do
  [ -e "$csv" ] || continue
  ledger="$csv.ledger.jsonl"
  if [ -e "$ledger" ]; then
    "$bin" retry "$ledger" --no-progress --log-format json
  else
    "$bin" run "$csv" --mapping "$mapping" --ledger "$ledger" --no-progress --log-format json
  fi
  code=$?
  [ -e "$ledger" ] && "$bin" report "$ledger" --json > "$csv.report.json"
  [ "$code" -gt "$worst" ] && worst=$code
done
exit "$worst"
