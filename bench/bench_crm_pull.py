"""Benchmark: `nurture crm pull` over 100,000 changed deals, served by the fake HubSpot from
tests/fakes (real HTTP on 127.0.0.1: the documented search, associations v4 and contacts batch
read), into SQLite (or PostgreSQL with --url).

Prints JSON. The CRM also holds `--population` deals that did not change in the window: the
first pull must not read them (requests grow with the changes, not with the CRM). Runs: the
first pull (every changed deal: new rows, deal_created / deal_won / deal_lost events,
lifecycle moves), a pull after 1 % of the deals moved a stage, and a pull with nothing new
(the floor). `requests_per_1000` counts every provider request per 1,000 deals read;
`hubspot_floor_seconds` is what HubSpot's 5 searches per second alone would cost.

    python bench/bench_crm_pull.py [--deals 100000] [--population 100000] [--url URL]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from integrations.http_retry import RetryPolicy  # noqa: E402
from integrations.hubspot import SEARCH_INTERVAL, HubSpotDeals  # noqa: E402
from nurture.crm.pull import pull_deals  # noqa: E402
from nurture.store.db import open_store  # noqa: E402
from nurture.store.tables import contact_t, event_t  # noqa: E402
from tests.fakes.hubspot import FakeHubSpot  # noqa: E402

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
TOKEN = "pat-bench-token"
STAGES = ("appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "contractsent")


def seed_contacts(store, n: int) -> None:
    with store.engine.begin() as conn:
        for lo in range(0, n, 50_000):
            conn.execute(contact_t.insert(), [
                {"email": f"person{i}@example.com", "lifecycle_stage": "lead", "score": 0.0, "attributes": {},
                 "created_at": NOW - timedelta(days=200), "updated_at": NOW - timedelta(days=200)}
                for i in range(lo, min(n, lo + 50_000))])


def seed_deals(fake: FakeHubSpot, changed: int, population: int, people: int, rng: random.Random) -> None:
    for i in range(population):  # untouched for a year: outside every window
        fake.put_deal(str(10_000_000 + i), stage=rng.choice(STAGES), modified=NOW - timedelta(days=365, minutes=i),
                      contacts=(f"person{rng.randrange(people)}@example.com",), amount="100")
    for i in range(changed):
        modified = NOW - timedelta(days=60) + timedelta(seconds=i * 40)
        roll = rng.random()
        stage = "closedwon" if roll < 0.2 else "closedlost" if roll < 0.3 else rng.choice(STAGES)
        contacts = [f"person{rng.randrange(people * 5 // 4)}@example.com"]  # 1 in 5 unknown to Nurture
        if rng.random() < 0.3:
            contacts.append(f"person{rng.randrange(people)}@example.com")
        fake.put_deal(str(1_000 + i), stage=stage, modified=modified, contacts=tuple(contacts),
                      amount=f"{rng.randint(100, 50_000)}", currency="EUR",
                      closed=modified if stage.startswith("closed") else None)


def run_pull(store, fake: FakeHubSpot, now: datetime) -> dict:
    source = HubSpotDeals(TOKEN, fake.url, RetryPolicy(), search_interval=0)
    searches_before = fake.count("/crm/v3/objects/deals/search")
    started = time.perf_counter()
    try:
        result = pull_deals(store, source, now=now, currency="EUR")
    finally:
        source.close()
    seconds = time.perf_counter() - started
    searches = fake.count("/crm/v3/objects/deals/search") - searches_before
    d = result.deals
    return {"seconds": round(seconds, 2), "deals_read": d.read,
            "deals_per_second": round(d.read / seconds) if seconds else None,
            "requests": result.requests, "searches": searches,
            "requests_per_1000": round(result.requests * 1000 / d.read, 1) if d.read else None,
            "hubspot_floor_seconds": round(searches * SEARCH_INTERVAL, 1), "events": d.events, "won": d.won,
            "lost": d.lost, "stage_changes": d.stage_changes, "without_contact": d.without_contact,
            "revenue": round(d.revenue, 2), "failure": result.failure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deals", type=int, default=100_000, help="deals changed in the window")
    parser.add_argument("--population", type=int, default=100_000, help="deals the CRM holds that did not change")
    parser.add_argument("--contacts", type=int, default=40_000, help="contacts Nurture knows")
    parser.add_argument("--url", help="a database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    rng = random.Random(13)
    tmp = Path(tempfile.mkdtemp(prefix="bench-crm"))
    store = open_store(args.url or f"sqlite:///{tmp / 'nurture.db'}")
    fake = FakeHubSpot(TOKEN).start()
    try:
        seed_contacts(store, args.contacts)
        started = time.perf_counter()
        seed_deals(fake, args.deals, args.population, args.contacts, rng)
        out: dict = {"deals_changed": args.deals, "population_unchanged": args.population,
                     "contacts_known": args.contacts, "database": store.engine.dialect.name,
                     "seed_seconds": round(time.perf_counter() - started, 1)}
        out["first_pull"] = run_pull(store, fake, NOW)
        moved = rng.sample(range(args.deals), args.deals // 100)
        for n, i in enumerate(moved):  # 1 % move a stage (some win) an hour later
            deal = fake.deals[str(1_000 + i)]["properties"]
            stage = "closedwon" if n % 4 == 0 else rng.choice([s for s in STAGES if s != deal["dealstage"]])
            contacts = tuple(e for e, rid in fake.contacts.items() if rid in fake.deals[str(1_000 + i)]["contacts"])
            fake.put_deal(str(1_000 + i), stage=stage, modified=NOW + timedelta(minutes=30, seconds=n),
                          contacts=contacts, amount=deal["amount"], currency="EUR",
                          closed=NOW + timedelta(minutes=30) if stage == "closedwon" else None)
        out["one_percent_changed"] = run_pull(store, fake, NOW + timedelta(hours=1))
        out["nothing_changed"] = run_pull(store, fake, NOW + timedelta(hours=2))
        with store.engine.connect() as conn:
            out["events_stored"] = conn.execute(select(func.count()).select_from(event_t)).scalar_one()
        out["fake_protocol_problems"] = fake.problems[:5]
    finally:
        fake.stop()
        store.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
