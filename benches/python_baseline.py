#!/usr/bin/env python3
"""The straightforward way, for comparison: csv + requests, one batch call at
a time, the same customer-only mapping as benches/run.sh's customers-only.toml.

    python3 benches/python_baseline.py EXPORT.csv URL   (password in THULIUM_PASSWORD)

Prints rows/s. No retries, no ledger, no pacing: the simplest script a
person would write. Used by `bash benches/run.sh python`.
"""
import csv
import os
import re
import sys
import time
from datetime import datetime

import requests

path, url = sys.argv[1], sys.argv[2].rstrip("/")
session = requests.Session()
session.auth = ("api_user", os.environ["THULIUM_PASSWORD"])


def customer(row):
    c = {"surname": row["Nazwisko"]}
    for key, col in (("name", "Imię"), ("identifier", "ID klienta"), ("email", "E-mail")):
        if row[col]:
            c[key] = row[col]
    if row["Telefon"]:
        c["phone_number"] = re.sub(r"[\s\-.()]", "", row["Telefon"]).lstrip("+")
    if row["Data urodzenia"]:
        c["birthdate"] = datetime.strptime(row["Data urodzenia"], "%d.%m.%Y").strftime("%Y-%m-%d")
    address = {k: row[col] for k, col in (("street", "Ulica"), ("city", "Miasto")) if row[col]}
    if address:
        c["address"] = address
    return c


start = time.monotonic()
rows = 0
batch = []
with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f, delimiter=";"):
        batch.append(customer(row))
        if len(batch) == 100:
            session.post(f"{url}/api/batch/customers", json={"customers": batch}).raise_for_status()
            rows += len(batch)
            batch = []
if batch:
    session.post(f"{url}/api/batch/customers", json={"customers": batch}).raise_for_status()
    rows += len(batch)
elapsed = time.monotonic() - start
print(f"python baseline: {rows} rows in {elapsed:.1f} s, {rows / elapsed:.0f} rows/s")
