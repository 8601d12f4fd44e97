#!/usr/bin/env bash
# Reproduces the figures in benches/README.md on this machine. Loopback only:
# every request goes to a sandbox started here on 127.0.0.1.
#   bash benches/run.sh            # everything (about 5 minutes)
#   bash benches/run.sh check      # one part: check | memory | rate | throughput | python | report | retry | upsert | plan
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
bin=target/release/thulium-import
data=target/bench-data
cargo build --release --locked -q
mkdir -p "$data"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install time"; exit 1; }

gen() { # rows: writes $data/export-<rows>.csv (via the check bench's generator)
  [ -f "$data/export-$1.csv" ] || cargo bench --locked -q --bench check -- "$1" >/dev/null
}
customers_only="$data/customers-only.toml"
cat > "$customers_only" <<'TOML'
[source]
delimiter = ";"
[customer]
surname = { column = "Nazwisko", required = true }
name = "Imię"
identifier = "ID klienta"
email = "E-mail"
phone_number = { column = "Telefon", transform = ["phone"] }
birthdate = { column = "Data urodzenia", date = "%d.%m.%Y" }
[customer.address]
street = "Ulica"
city = "Miasto"
TOML
with_items="$data/customers-items.toml"
{ cat "$customers_only"; printf '[[field_group]]\ngroup_id = 2\n[field_group.values]\n12 = "Kanał pozyskania"\n8 = { column = "Liczba zamówień", type = "integer" }\n'; } > "$with_items"

sandbox() { # args...: starts a sandbox on a free port, sets $url and $sandbox_pid
  local port=$((20000 + RANDOM % 20000))
  $bin sandbox --listen 127.0.0.1:$port --password bench "$@" >/dev/null 2>&1 &
  sandbox_pid=$!
  url=http://127.0.0.1:$port
  for _ in $(seq 50); do curl -fs -u api_user:bench "$url/_sandbox/stats" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "sandbox did not start"; exit 1
}
import() { # csv mapping extra...: runs an import against $url, prints its summary lines
  local csv=$1 mapping=$2; shift 2
  rm -f "$data/bench.ledger.jsonl"
  THULIUM_PASSWORD=bench $bin run "$csv" --mapping "$mapping" --url "$url" --user api_user \
    --ledger "$data/bench.ledger.jsonl" --no-progress "$@" 2>/dev/null | grep -E '^(rows|requests):' || true
}

if [[ $part == all || $part == check ]]; then
  echo "== 1. check on 1,000,000 rows vs a bare csv read"
  cargo bench --locked -q --bench check -- 1000000 | tail -4
fi

if [[ $part == all || $part == memory ]]; then
  echo "== 2. peak memory, 10,000 vs 1,000,000 rows"
  gen 10000; gen 1000000
  for n in 10000 1000000; do
    /usr/bin/time -f "check $n rows: peak RSS %M KiB, %e s" $bin check "$data/export-$n.csv" --mapping "$customers_only" >/dev/null 2>"$data/time.txt" || true
    tail -1 "$data/time.txt"
  done
  sandbox
  for n in 10000 1000000; do
    rm -f "$data/bench.ledger.jsonl"
    THULIUM_PASSWORD=bench /usr/bin/time -f "run (customers, no rate limit) $n rows: peak RSS %M KiB, %e s" \
      $bin run "$data/export-$n.csv" --mapping "$customers_only" --url "$url" --user api_user \
      --ledger "$data/bench.ledger.jsonl" --no-progress --rate 100000 --concurrency 8 >/dev/null 2>"$data/time.txt" || true
    tail -1 "$data/time.txt"
  done
  kill $sandbox_pid
fi

stats() { # prints the sandbox's request total, 429 share and busiest second
  curl -s -u api_user:bench "$url/_sandbox/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("  sandbox: %d requests, %d answered 429 (%.2f%%), at most %d in any 1-second window" % (s["requests_total"], s["responses_429"], 100*s["responses_429"]/max(1,s["requests_total"]), s["max_in_any_second"]))'
}

if [[ $part == all || $part == rate ]]; then
  echo "== 3. pacing: --rate 50 against --rate-limit 50 counted three ways (--latency-ms 20, 1,000 rows with an item each)"
  gen 1000
  for limiter in sliding fixed bucket; do
    sandbox --latency-ms 20 --rate-limit 50 --limiter $limiter
    echo "--limiter $limiter:"
    import "$data/export-1000.csv" "$with_items" --rate 50
    stats
    kill $sandbox_pid
  done
  echo "== 3b. --rate auto against an undocumented limit of 40/s, about a minute each (2,400 rows with an item each)"
  gen 2400
  for limiter in sliding fixed bucket; do
    sandbox --latency-ms 20 --rate-limit 40 --limiter $limiter
    echo "--limiter $limiter:"
    THULIUM_PASSWORD=bench $bin run "$data/export-2400.csv" --mapping "$with_items" --url "$url" --user api_user \
      --ledger "$data/bench.ledger.jsonl.auto" --no-progress --rate auto 2>/dev/null | grep -E '^(requests|rate):' || true
    rm -f "$data/bench.ledger.jsonl.auto"
    stats
    kill $sandbox_pid
  done
  echo "== 3c. --rate 50 on a slow server: calls in flight follow rate x latency (1,000 rows with an item each; 300 with --concurrency 4)"
  gen 300
  for latency in 50 300 1000; do
    for conc in "" "--concurrency 4"; do
      sandbox --latency-ms $latency
      echo "--latency-ms $latency ${conc:-(adaptive)}:"
      file="$data/export-1000.csv"; [ -n "$conc" ] && file="$data/export-300.csv"
      import "$file" "$with_items" --rate 50 $conc
      kill $sandbox_pid
    done
  done
fi

if [[ $part == all || $part == throughput ]]; then
  echo "== 4. customer-only import of 100,000 rows, no rate limit, --latency-ms 20"
  gen 100000
  for c in 1 2 4 8 16; do
    sandbox --latency-ms 20
    echo "--concurrency $c:"
    import "$data/export-100000.csv" "$customers_only" --rate 100000 --concurrency $c
    kill $sandbox_pid
  done
fi

if [[ $part == all || $part == python ]]; then
  echo "== 5. the same customer import by a straightforward Python script (csv + requests), --latency-ms 20"
  gen 100000
  python3 -c 'import requests' 2>/dev/null || pip install requests >/dev/null
  sandbox --latency-ms 20
  THULIUM_PASSWORD=bench python3 benches/python_baseline.py "$data/export-100000.csv" "$url"
  kill $sandbox_pid
  for c in 1 4; do
    sandbox --latency-ms 20
    echo "thulium-import --concurrency $c:"
    import "$data/export-100000.csv" "$customers_only" --rate 100000 --concurrency $c
    kill $sandbox_pid
  done
fi

if [[ $part == all || $part == report ]]; then
  echo "== 6. report (the one fold of the ledger) at 20,000, 200,000 and 1,000,000 rows"
  cargo bench --locked -q --bench report | tail -5
  for n in 20000 200000 1000000; do
    /usr/bin/time -f "report $n rows: peak RSS %M KiB, %e s" $bin report "$data/ledger-$n.jsonl" >/dev/null 2>"$data/time.txt" || true
    tail -1 "$data/time.txt"
  done
fi

if [[ $part == all || $part == retry ]]; then
  echo "== 7. retry streams: peak memory of a retry after a crash 1 s into the import (--latency-ms 20), 10,000 vs 1,000,000 rows"
  gen 10000; gen 1000000
  for n in 10000 1000000; do
    sandbox --latency-ms 20
    rm -f "$data/retry.ledger.jsonl"
    THULIUM_PASSWORD=bench $bin run "$data/export-$n.csv" --mapping "$customers_only" --url "$url" --user api_user \
      --ledger "$data/retry.ledger.jsonl" --no-progress --rate 100000 --concurrency 8 >/dev/null 2>&1 &
    run_pid=$!
    sleep 1; kill -9 $run_pid 2>/dev/null || true; wait $run_pid 2>/dev/null || true
    done_before=$(grep -c '"stage":"customer","status":"ok"' "$data/retry.ledger.jsonl" || true)
    THULIUM_PASSWORD=bench /usr/bin/time -f "retry of $n rows ($done_before done before the crash): peak RSS %M KiB, %e s" \
      $bin retry "$data/retry.ledger.jsonl" --url "$url" --user api_user --no-progress --rate 100000 --concurrency 8 \
      >/dev/null 2>"$data/time.txt" || true
    tail -1 "$data/time.txt"
    kill $sandbox_pid
  done
fi

upsert_map="$data/customers-upsert.toml"
night2="$data/export-100000-night2.csv"
upsert_files() { # the upsert mapping, and the 100,000-row export with 1 % of its rows changed
  sed 's/^\[customer\]$/[customer]\nmatch = "identifier"/' "$customers_only" > "$upsert_map"
  python3 - "$data/export-100000.csv" "$night2" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f, open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    r, w = csv.reader(f, delimiter=";"), csv.writer(out, delimiter=";", lineterminator="\r\n")
    w.writerow(next(r))
    for i, row in enumerate(r):
        if i % 100 == 0:
            row[1] = "Renamed"  # Imię: 1 % of the rows changed
        w.writerow(row)
PY
}

if [[ $part == all || $part == upsert ]]; then
  echo "== 8. upsert: a system of 100,000 customers, a full export of 100,000 rows, 1 % changed on night 2"
  gen 100000
  upsert_files
  sandbox --preload "$data/export-100000.csv" --preload-mapping "$customers_only"
  rm -f "$data/upsert.sqlite"*
  for night in 1 2; do
    file="$data/export-100000.csv"; [ $night = 2 ] && file="$night2"
    rm -f "$data/night.ledger.jsonl"
    echo "night $night:"
    THULIUM_PASSWORD=bench $bin run "$file" --mapping "$upsert_map" --url "$url" --user api_user \
      --ledger "$data/night.ledger.jsonl" --state "$data/upsert.sqlite" --no-progress --rate 100000 --concurrency 8 \
      2>&1 | grep -E '^(customers|requests):|^Finding|^Index' || true
  done
  kill $sandbox_pid

  echo "== 9. finding customers: a lookup per row vs an index, against 100,000 customers"
  head -n 1001 "$data/export-100000.csv" > "$data/export-first-1000.csv"
  for f in export-first-1000 export-100000; do
    for mode in never always; do
      sandbox --preload "$data/export-100000.csv" --preload-mapping "$customers_only"
      rm -f "$data/lookup.ledger.jsonl"
      echo "$f, --index $mode:"
      THULIUM_PASSWORD=bench $bin run "$data/$f.csv" --mapping "$upsert_map" --url "$url" --user api_user \
        --ledger "$data/lookup.ledger.jsonl" --index $mode --no-progress --rate 100000 --concurrency 8 \
        2>&1 | grep -E '^requests:|^Index' || true
      kill $sandbox_pid
    done
  done

  echo "== 10. the index of 1,000,000 customers: in-process, and the importer's peak memory reading one"
  cargo bench --locked -q --bench index | tail -1
  sandbox --preload-customers 1000000
  rm -f "$data/index.ledger.jsonl"
  THULIUM_PASSWORD=bench /usr/bin/time -f "run --index always, 1,000 rows against 1,000,000 customers: peak RSS %M KiB, %e s" \
    $bin run "$data/export-first-1000.csv" --mapping "$upsert_map" --url "$url" --user api_user \
    --ledger "$data/index.ledger.jsonl" --index always --no-progress --rate 100000 --concurrency 8 >/dev/null 2>"$data/time.txt" || true
  grep -E 'Index|peak' "$data/time.txt"
  kill $sandbox_pid
fi

if [[ $part == all || $part == plan ]]; then
  echo "== 11. plan: a full export of 100,000 rows (1 % changed) against a system of 100,000 customers, then the run it planned"
  gen 100000
  upsert_files
  sandbox --preload "$data/export-100000.csv" --preload-mapping "$customers_only"
  before=$(curl -s -u api_user:bench "$url/_sandbox/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_total"])')
  THULIUM_PASSWORD=bench /usr/bin/time -f "plan: peak RSS %M KiB, %e s" $bin plan "$night2" --mapping "$upsert_map" --url "$url" --user api_user \
    --no-progress --rate 100000 --concurrency 8 >"$data/plan.txt" 2>"$data/time.txt" || true
  grep -E '^Index|^Finding|peak' "$data/time.txt"
  grep -vE '^  row ' "$data/plan.txt"
  after=$(curl -s -u api_user:bench "$url/_sandbox/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["requests_total"], sum(v for k, v in s["requests"].items() if not k.startswith("GET")))')
  echo "  sandbox: the plan sent $(( ${after% *} - before )) request(s), ${after#* } of them not GETs"
  THULIUM_PASSWORD=bench /usr/bin/time -f "plan at the default --rate 10: peak RSS %M KiB, %e s" $bin plan "$night2" --mapping "$upsert_map" --url "$url" --user api_user \
    --no-progress --json >"$data/plan.json" 2>"$data/time.txt" || true
  grep -E 'peak' "$data/time.txt"
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("  --json: %d rows, %d requests, %.1f s at --rate 10" % (len(p["rows"]), p["requests"], p["seconds_at_rate"]))' "$data/plan.json"
  rm -f "$data/plan-run.ledger.jsonl"
  THULIUM_PASSWORD=bench /usr/bin/time -f "run: peak RSS %M KiB, %e s" $bin run "$night2" --mapping "$upsert_map" --url "$url" --user api_user \
    --ledger "$data/plan-run.ledger.jsonl" --no-progress --rate 100000 --concurrency 8 2>"$data/time.txt" | grep -E '^(customers|requests):' || true
  grep -E 'peak' "$data/time.txt"
  kill $sandbox_pid
fi
