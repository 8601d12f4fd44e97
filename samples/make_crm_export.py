#!/usr/bin/env python3
"""Writes samples/crm_export.csv: a realistic Polish CRM export (windows-1250,
';', CRLF, quoted multi-line notes) with a handful of deliberately bad rows.

The file is committed; this script documents how it was made and remakes it
identically (fixed seed). The bad rows are listed in BAD below, and the tests
rely on their number and lines.
"""
import csv
import io
import random
import sys

random.seed(20261122)

FIRST = ["Anna", "Piotr", "Katarzyna", "Tomasz", "Małgorzata", "Paweł", "Agnieszka", "Michał",
         "Joanna", "Łukasz", "Ewa", "Krzysztof", "Zofia", "Grzegorz", "Żaneta", "Wojciech",
         "Barbara", "Jędrzej", "Dorota", "Bartłomiej"]
LAST = ["Nowak", "Kowalski", "Wiśniewska", "Wójcik", "Kowalczyk", "Kamińska", "Lewandowski",
        "Zieliński", "Szymańska", "Woźniak", "Dąbrowski", "Kozłowska", "Jankowski", "Mazur",
        "Kwiatkowska", "Krawczyk", "Piotrowski", "Grabowska", "Nowakowski", "Pawłowska",
        "Michalski", "Nowicka", "Adamczyk", "Dudek", "Zając", "Wieczorek", "Jabłoński", "Król",
        "Majewska", "Olszewski", "Jaworska", "Wróbel", "Malinowski", "Pawlak", "Witkowska",
        "Walczak", "Stępień", "Górski", "Rutkowska", "Michalak", "Sikora", "Ostrowski",
        "Baran", "Duda", "Szewczyk", "Tomaszewski", "Pietrzak", "Marciniak", "Wróblewska",
        "Zalewski", "Jakubowska", "Jasiński", "Zawadzka", "Sadowski", "Bąk", "Chmielewski",
        "Włodarczyk", "Borkowska", "Czarnecki", "Sawicka", "Sokołowski", "Urbańska",
        "Kubiak", "Maciejewski", "Szczepańska", "Kucharski", "Wilk", "Kalinowska", "Lis",
        "Mazurek", "Wysocki", "Adamska", "Kaźmierczak", "Wasilewski", "Sobczak", "Czerwińska",
        "Andrzejewski", "Cieślak", "Głowacka", "Zakrzewski", "Kołodziej", "Sikorska",
        "Krajewski", "Gajewska", "Szymczak", "Szulc", "Baranowski", "Laskowska", "Brzeziński",
        "Makowska", "Ziółkowski", "Przybylska"]
STREETS = ["Długa", "Krótka", "Marszałkowska", "Piłsudskiego", "Grunwaldzka", "Świętokrzyska",
           "Żeromskiego", "Kościuszki", "Mickiewicza", "Słowackiego", "Ogrodowa", "Leśna"]
CITIES = [("Warszawa", "00-"), ("Kraków", "30-"), ("Łódź", "90-"), ("Wrocław", "50-"),
          ("Poznań", "60-"), ("Gdańsk", "80-"), ("Szczecin", "70-"), ("Bydgoszcz", "85-"),
          ("Lublin", "20-"), ("Białystok", "15-"), ("Kielce", "25-"), ("Rzeszów", "35-")]
AGENTS = ["j.doe", "a.nowak", "k.wisniewska", "m.zielinski", "p.lewandowski"]
CHANNELS = ["telefon", "www", "polecenie", "targi", "e-mail"]
NOTES = [
    "Klient prosi o kontakt po 16:00.",
    "Zainteresowany ofertą \"Pakiet Biznes\";\r\nprosi o wycenę na 3 stanowiska.",
    "Reklamacja z 12.03 rozpatrzona pozytywnie.\r\nWysłano korektę faktury.\r\nDo potwierdzenia telefonicznie.",
    "Nie dzwonić w poniedziałki.",
    "Przeniesiony z systemu Zefir; historia w załączniku.",
    "Umówione spotkanie w oddziale, sala 2.",
]
RESULTS = ["sukces", "oddzwonić", "brak zainteresowania", "błędny numer"]

HEADER = ["Thulium ID", "ID klienta", "Imię", "Nazwisko", "E-mail", "Telefon", "Data urodzenia",
          "VIP", "Ulica", "Nr domu", "Kod pocztowy", "Miasto", "Segment", "Kanał pozyskania",
          "Liczba zamówień", "Kampania", "Opiekun", "Następny kontakt", "Nr rekordu", "Status",
          "Wynik rozmowy", "Notatka", "Data notatki"]

ASCII = str.maketrans("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ", "acelnoszzACELNOSZZ")


def phone():
    n = "".join(random.choice("0123456789") for _ in range(8))
    n = random.choice("5678") + n
    style = random.randrange(5)
    if style == 0:
        return f"+48 {n[:3]} {n[3:6]} {n[6:]}"
    if style == 1:
        return f"{n[:3]}-{n[3:6]}-{n[6:]}"
    if style == 2:
        return f"(22) {n[2:5]} {n[5:7]} {n[7:]}"
    if style == 3:
        return n
    return f"{n[:3]} {n[3:6]} {n[6:]}, +48 22 {n[:3]} {n[3:5]} {n[5:7]}"


def row(i):
    first, last = random.choice(FIRST), random.choice(LAST)
    if first.endswith("a") and last.endswith("ski"):
        last = last[:-1] + "a"
    city, zip_prefix = random.choice(CITIES)
    login = f"{first[0]}.{last}".lower().translate(ASCII)
    email = f"{login}@example.pl"
    if random.random() < 0.1:
        email += f", {login}@firma.example.com"
    if random.random() < 0.08:
        email = ""
    campaign = random.choice(["00001", "00001", "00002", "", ""])
    note = random.choice(NOTES) if random.random() < 0.4 else ""
    in_update = random.random() < 0.3
    return {
        "Thulium ID": "",
        "ID klienta": f"CRM-{10000 + i}",
        "Imię": first,
        "Nazwisko": last,
        "E-mail": email,
        "Telefon": phone() if random.random() < 0.9 else "",
        "Data urodzenia": f"{random.randint(1, 28):02}.{random.randint(1, 12):02}.{random.randint(1950, 2004)}" if random.random() < 0.7 else "",
        "VIP": random.choice(["tak", "nie", "nie", "nie", ""]),
        "Ulica": random.choice(STREETS),
        "Nr domu": f"{random.randint(1, 120)}{random.choice(['', '', 'a', '/3'])}",
        "Kod pocztowy": f"{zip_prefix}{random.randint(1, 999):03}",
        "Miasto": city,
        "Segment": random.choice(["A", "B", "C"]),
        "Kanał pozyskania": random.choice(CHANNELS),
        "Liczba zamówień": str(random.randint(0, 40)) if random.random() < 0.8 else "",
        "Kampania": campaign,
        "Opiekun": random.choice(AGENTS) if campaign else "",
        "Następny kontakt": f"{random.randint(1, 28):02}.12.2026 {random.randint(8, 17):02}:{random.choice(['00', '15', '30', '45'])}" if campaign else "",
        "Nr rekordu": str(1234500000 + i) if in_update else "",
        "Status": str(random.randint(1, 8)) if in_update else "",
        "Wynik rozmowy": random.choice(RESULTS) if in_update else "",
        "Notatka": note,
        "Data notatki": f"{random.randint(1, 28):02}.11.2026 {random.randint(8, 17):02}:{random.randint(0, 59):02}" if note else "",
    }


ROWS = 300
# Deliberately bad rows: record number -> (column, bad value). Each makes
# exactly one row invalid.
BAD = {
    17: ("Telefon", "601 234 56x"),              # letters in a phone number
    42: ("Data urodzenia", "31.02.1990"),        # impossible date
    77: ("VIP", "może"),                         # not in the map
    123: ("Nazwisko", ""),                       # required surname missing
    150: ("E-mail", "jan.kowalski(at)wp.pl"),    # not an e-mail address
    201: ("Liczba zamówień", "dużo"),            # not an integer
    248: ("Kampania", "0001"),                   # campaign id of the wrong length
}
SHORT_ROW = 275                                  # a row with too few fields

rows = [row(i) for i in range(1, ROWS + 1)]
for n, (column, value) in BAD.items():
    rows[n - 1][column] = value
    if column == "Kampania":
        rows[n - 1]["Opiekun"] = "j.doe"
        rows[n - 1]["Następny kontakt"] = "01.12.2026 10:00"

buf = io.StringIO()
w = csv.writer(buf, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
w.writerow(HEADER)
for i, r in enumerate(rows, start=1):
    cells = [r[h] for h in HEADER]
    if i == SHORT_ROW:
        cells = cells[:10]
    w.writerow(cells)
out = sys.argv[1] if len(sys.argv) > 1 else "samples/crm_export.csv"
with open(out, "wb") as f:
    f.write(buf.getvalue().encode("windows-1250"))
