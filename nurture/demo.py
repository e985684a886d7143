"""`nurture demo`: a small, deterministic story on the embedded default.

Eight shoppers in six time zones with mixed consent leave carts; the project's
cart_abandonment journey runs over three simulated days as Prefect flow runs (one tick per
scheduled moment); the story ends with the message log and the outbox. Runs in its own data
directory (`.nurture/demo/`), which it wipes first, so it can be run again and again.
"""
from __future__ import annotations

import os
import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from rich.console import Console

from nurture.consent_ledger import record_consent, suppress
from nurture.ingest import track_records
from nurture.messages import message_log
from nurture.store.db import open_store
from nurture.store.models import Contact

START = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)  # a Monday
TICKS = [timedelta(minutes=5), timedelta(hours=1, minutes=5), timedelta(hours=3), timedelta(hours=13),
         timedelta(hours=25, minutes=5), timedelta(hours=26, minutes=10), timedelta(hours=49), timedelta(hours=73)]

# name, e-mail, time zone, country, phone, email consent, sms consent, cart value, story note
PEOPLE = [
    ("Ana", "Schmidt", "ana@example.com", "Europe/Berlin", "DE", "+4915112345678", "granted", "granted", 149, "big cart: an e-mail, a day later an SMS"),
    ("Hiro", "Tanaka", "hiro@example.com", "Asia/Tokyo", "JP", "+819012345678", "granted", "granted", 210, "big cart in Tokyo"),
    ("Ben", "Carter", "ben@example.com", "America/New_York", "US", None, "granted", None, 45, "due at 05:00 in New York: deferred to 08:00 local"),
    ("Chitra", "Rai", "chitra@example.com", "Asia/Kathmandu", "NP", None, "granted", None, 80, "buys after the reminder: converts, leaves the journey"),
    ("Ines", "Costa", "ines@example.com", "Europe/Lisbon", "PT", None, "granted", None, 55, "an ordinary cart in Lisbon"),
    ("Dmitri", "Volkov", "dmitri@example.com", "Europe/Berlin", "DE", None, "granted", None, 60, "revokes e-mail consent before the send"),
    ("Jonas", "Meier", "jonas@example.com", "Europe/Zurich", "CH", None, "granted", None, 75, "an ordinary cart in Zurich"),
    ("Kemal", "Yilmaz", "kemal@example.com", "Europe/Istanbul", "TR", None, "granted", None, 65, "an ordinary cart in Istanbul"),
    ("Eva", "Lind", "eva@example.com", "Europe/Stockholm", "SE", None, "pending", None, 70, "never confirmed her double opt-in"),
    ("Farid", "Haddad", "farid@example.com", "Asia/Dubai", "AE", None, "granted", None, 90, "his address bounced before"),
    ("Grace", "Okafor", "grace@example.com", "Africa/Lagos", "NG", None, "granted", None, 12, "cart under 20: not enrolled"),
]


def seed_story(url: str, seed: int) -> None:
    rng = random.Random(seed)
    store = open_store(url)
    before = START - timedelta(days=30)
    contact_t = Contact.__table__
    with store.engine.begin() as conn:
        for first, last, email, tz, country, phone, consent_email, consent_sms, _, _ in PEOPLE:
            cid = conn.execute(contact_t.insert().values(
                email=email, phone=phone, first_name=first, last_name=last, timezone=tz, country=country,
                locale="de" if country == "DE" else "en", lifecycle_stage="lead", score=0.0,
                attributes={"source": "demo"}, created_at=before, updated_at=before)).inserted_primary_key[0]
            record_consent(conn, cid, "email", consent_email, source="demo-signup", at=before,
                           policy_version="demo", confirmed=consent_email == "granted")
            if consent_sms:
                record_consent(conn, cid, "sms", consent_sms, source="demo-signup", at=before,
                               policy_version="demo", confirmed=True)
            if email == "dmitri@example.com":
                record_consent(conn, cid, "email", "revoked", source="demo-preference-center",
                               at=START + timedelta(minutes=30), policy_version="demo")
            if email == "farid@example.com":
                suppress(conn, reason="hard_bounce", at=before, contact_id=cid, address=email, channel="email")
    events = []
    for i, person in enumerate(PEOPLE):
        email, value = person[2], person[8]
        at = START - timedelta(minutes=rng.randint(1, 4))
        events.append((i, {"event_id": f"demo-cart-{i}", "email": email, "event": "add_to_cart",
                           "properties": {"cart_value": value, "item_count": rng.randint(1, 4)},
                           "timestamp": at.isoformat()}))
    events.append((99, {"event_id": "demo-purchase-chitra", "email": "chitra@example.com", "event": "purchase",
                        "properties": {"value": 80.0}, "timestamp": (START + timedelta(hours=4)).isoformat()}))
    track_records(store, events, source="demo", now=START)
    store.dispose()


def run_demo(project: Path, *, seed: int, run_ticks: Callable[[datetime], list[dict]], console: Console) -> None:
    if not (project / "journeys" / "cart_abandonment.yaml").is_file():
        from nurture.cli.common import CliError
        raise CliError(f"{project} has no journeys/cart_abandonment.yaml: run the demo from the Nurture checkout "
                       "(or pass --project)")
    demo_dir = project / ".nurture" / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    url = f"sqlite:///{demo_dir / 'nurture.db'}"
    os.environ["NURTURE_DATA_DIR"] = str(demo_dir)
    os.environ["NURTURE_DATABASE_URL"] = url
    console.print(f"[bold]Nurture demo[/bold]: {len(PEOPLE)} shoppers, journey cart_abandonment, "
                  f"{len(TICKS)} ticks over three days from {START:%Y-%m-%d %H:%M} UTC\n")
    from nurture.runtime.stable_random import in_holdout
    for number, (first, last, email, tz, *_rest, note) in enumerate(PEOPLE, 1):
        if in_holdout("cart_abandonment", number, 0.10) and not note.startswith("cart under"):
            note = "in the 10% holdout: enrolled, never messaged (the control group for lift)"
        console.print(f"  {first + ' ' + last:<15} {tz:<18} {note}")
    seed_story(url, seed)
    console.print("\nRunning the ticks as Prefect flow runs (the first start of Prefect takes a few seconds)…")
    for offset in TICKS:
        now = START + offset
        results = run_ticks(now)
        done = sum(r["count"] for res in results for r in res["outcomes"] if r["outcome"] in ("sent", "queued"))
        console.print(f"  tick {now:%a %H:%M} UTC: {sum(res['enrolled'] for res in results)} enrolled, "
                      f"{sum(res['converted'] for res in results)} converted, "
                      f"{sum(res['exited'] for res in results)} exited, {done} message event(s)")
    store = open_store(url)
    rows = message_log(store)
    console.print("\n[bold]Message log[/bold] (every outcome of every send step):")
    console.print(f"  {'contact':<20} {'step':<10} {'channel':<7} {'status':<10} {'reason':<20} {'due (UTC)':<12} sent (UTC)")
    for r in rows:
        console.print(f"  {r['contact']:<20} {r['step']:<10} {r['channel']:<7} {r['status']:<10} {r['reason'] or '':<20} "
                      f"{(r['due_at'] or '')[5:16].replace('T', ' '):<12} {(r['sent_at'] or '')[5:16].replace('T', ' ')}",
                      markup=False)
    outbox = demo_dir / "outbox"
    files = sorted(p for p in outbox.rglob("*") if p.is_file())
    console.print(f"[bold]Outbox[/bold] ({outbox}):")
    for path in files:
        console.print(f"  {path.relative_to(outbox)}  ({path.stat().st_size} bytes)")
    console.print(f"\nOpen an .eml file in any mail client; `nurture --project {project} messages --json` "
                  f"with NURTURE_DATABASE_URL={url} shows the log for scripts.")
    store.dispose()
