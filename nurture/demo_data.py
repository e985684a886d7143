"""The synthetic company of `nurture demo`: about 5,000 contacts (B2C shoppers and B2B leads in
many time zones, mixed consent), a product catalog, a purchase history, and 30 days of
events with believable funnels — plus the world's reactions to what the journeys send
(opens, clicks, purchases, unsubscribes, bounces, sales calls after a handover).

Everything is drawn from one `random.Random(seed)`, so a seed always yields the same company.
Events are produced up front and handed to the ingest path (`track_records`) slice by slice
as the simulated clock passes them; reactions are drawn from a generator seeded by
(seed, message id), so they too are the same on every run.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sqlalchemy import bindparam, select

from nurture.consent_ledger import append_consents, record_consent, suppress
from nurture.ingest import track_records
from nurture.runtime.sql import chunks
from nurture.store.db import Store
from nurture.store.models import HOLDOUT, SENT
from nurture.store.tables import contact_t, handover_t, message_t, product_t


# time zone, country, locale, weight
PLACES = [
    ("Europe/Berlin", "DE", "de", 24), ("Europe/Vienna", "AT", "de", 5), ("Europe/Zurich", "CH", "de", 4),
    ("Europe/London", "GB", "en", 10), ("Europe/Dublin", "IE", "en", 2), ("Europe/Amsterdam", "NL", "en", 4),
    ("Europe/Paris", "FR", "en", 4), ("Europe/Stockholm", "SE", "en", 2), ("Europe/Madrid", "ES", "en", 3),
    ("America/New_York", "US", "en", 12), ("America/Chicago", "US", "en", 6), ("America/Los_Angeles", "US", "en", 6),
    ("America/Sao_Paulo", "BR", "en", 2), ("Asia/Tokyo", "JP", "en", 3), ("Asia/Kolkata", "IN", "en", 3),
    ("Asia/Singapore", "SG", "en", 2), ("Australia/Sydney", "AU", "en", 3), ("Africa/Lagos", "NG", "en", 2),
    ("Asia/Kathmandu", "NP", "en", 1),
]
FIRST = ["Anna", "Ben", "Clara", "David", "Elif", "Felix", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
         "Mia", "Noah", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Xenia", "Yusuf",
         "Zoe", "Lukas", "Maria", "Tom", "Sofia", "Arjun", "Chitra", "Emeka", "Hana", "Liam", "Nora"]
LAST = ["Schmidt", "Müller", "Smith", "Jones", "García", "Rossi", "Tanaka", "Kumar", "Okafor", "Novak",
        "Berg", "Costa", "Dubois", "Meier", "Yilmaz", "Nguyen", "Silva", "Brown", "Fischer", "Larsen", "Rai"]
COMPANIES = ["Acme", "Brandt Maschinenbau", "Cloudlane", "Datawerk", "Evergreen Logistics", "Fintrio", "Globex",
             "Helio Systems", "Ironbridge", "Juniper Retail", "Kestrel Labs", "Lindqvist & Co", "Mosaic Health",
             "Northwind", "Orbit Media", "Pioneer Foods", "Quanta", "Riverstone", "Solara", "Tidewater"]
ROLES = [("ceo", 1), ("cto", 1), ("cmo", 1), ("head_of_marketing", 2), ("head_of_sales", 1), ("founder", 1),
         ("marketing_manager", 4), ("sales_manager", 2), ("ops_manager", 2), ("analyst", 3), ("intern", 1)]
INDUSTRIES = [("saas", 3), ("manufacturing", 3), ("ecommerce", 2), ("services", 2), ("public_sector", 1),
              ("education", 1)]
PAIN_POINTS = ["cost", "efficiency", "lead_quality", "reporting"]
# sku, name, category, price, consumption days (None: durable)
PRODUCTS = [
    ("COF-1", "Espresso beans 1 kg", "coffee", 18.90, 21), ("COF-2", "Filter coffee 500 g", "coffee", 9.90, 14),
    ("COF-3", "Milk frother", "coffee", 39.00, None), ("COF-4", "Burr grinder", "coffee", 89.00, None),
    ("TEA-1", "Green tea sencha", "tea", 12.50, 30), ("TEA-2", "Chai blend", "tea", 9.90, 30),
    ("TEA-3", "Glass teapot", "tea", 29.00, None),
    ("SKN-1", "Day cream", "skincare", 24.00, 45), ("SKN-2", "Cleansing gel", "skincare", 14.00, 40),
    ("SKN-3", "Serum", "skincare", 39.00, 60),
    ("HOM-1", "Linen throw", "home", 79.00, None), ("HOM-2", "Scented candle", "home", 19.00, 40),
    ("HOM-3", "Ceramic vase", "home", 49.00, None), ("HOM-4", "Cotton towels (set)", "home", 59.00, None),
    ("SPT-1", "Yoga mat", "sport", 45.00, None), ("SPT-2", "Protein bar box", "sport", 29.00, 20),
    ("SPT-3", "Running socks", "sport", 15.00, 90), ("SPT-4", "Smart bottle", "sport", 35.00, None),
]
# the catalog in German as well: written as the products' `name_de` / `category_de` (nurture.catalog),
# so a German contact reads "Milchaufschäumer" where an English one reads "Milk frother" — the
# events keep the shop's English names, as one shop front would send them
NAMES_DE = {
    "COF-1": "Espressobohnen 1 kg", "COF-2": "Filterkaffee 500 g", "COF-3": "Milchaufschäumer",
    "COF-4": "Kaffeemühle mit Kegelmahlwerk", "TEA-1": "Grüner Tee Sencha", "TEA-2": "Chai-Mischung",
    "TEA-3": "Teekanne aus Glas", "SKN-1": "Tagescreme", "SKN-2": "Reinigungsgel", "SKN-3": "Serum",
    "HOM-1": "Leinenplaid", "HOM-2": "Duftkerze", "HOM-3": "Keramikvase", "HOM-4": "Baumwollhandtücher (Set)",
    "SPT-1": "Yogamatte", "SPT-2": "Proteinriegel (Box)", "SPT-3": "Laufsocken", "SPT-4": "Smarte Trinkflasche",
}
CATEGORIES_DE = {"coffee": "Kaffee", "tea": "Tee", "skincare": "Hautpflege", "home": "Wohnen", "sport": "Sport"}
# what a received message makes a contact do (besides opening/clicking): probability of a
# purchase within a few days, per journey — the effect the holdout measures
PURCHASE_AFTER = {"cart_abandonment": 0.22, "browse_abandonment": 0.05, "welcome": 0.04, "win_back": 0.05,
                  "post_purchase": 0.02}
# a step that works better than its journey's average: the subject-line test of browse_abandonment
# has a real winner for the report (and auto_winner) to find
STEP_EFFECT = {"browse_reminder_scarcity": 1.8}
# the coupons the shipped journeys' messages carry (their `offer:`): a purchase after one uses it
COUPONS = {"incentive": ("CART10", 10), "last_call": ("CART10", 10), "welcome_first_order": ("WELCOME10", 10),
           "comeback_offer": ("COMEBACK15", 15)}
# where contacts come from: source attribute → (utm_source, utm_medium, utm_campaign, click id kind)
# — the paid ones match the ad spend below; a few links in the wild carry off-standard values
LANDINGS = {
    "google": ("google", "cpc", "shop_search", "gclid"), "instagram": ("instagram", "paid_social", "autumn_collection",
                                                                     "fbclid"),
    "newsletter": ("newsletter", "email", "monthly_newsletter", None), "referral": ("referral", "referral", "friends",
                                                                                  None),
    "shop": (None, None, None, None), "linkedin": ("linkedin", "paid_social", "b2b_whitepaper", "li_fat_id"),
    "webinar": ("webinar", "event", "automation_webinar", None), "event": (None, None, None, None),
}
OFF_STANDARD = [("fb", "paidsocial", "autumn_collection", None), ("Instagram", "social", "influencer_oct", None)]
# daily ad spend (EUR) per (source, medium, campaign): what the paid landings above cost
AD_SPEND = [("google", "cpc", "shop_search", 38.0), ("instagram", "paid_social", "autumn_collection", 26.0),
            ("linkedin", "paid_social", "b2b_whitepaper", 45.0), ("google", "cpc", "b2b_search", 18.0)]
OPEN, CLICK, UNSUBSCRIBE, BOUNCE = 0.38, 0.09, 0.004, 0.003


@dataclass
class Person:
    email: str
    b2b: bool
    locale: str
    country: str
    tz: str
    signup_at: Optional[datetime]  # signs up during the simulation (welcome journey)
    interest: float  # how often it shops / reads
    source: str = "shop"  # where it came from (its landing page's UTM parameters)
    created: Optional[datetime] = None


@dataclass
class Company:
    """The generated world: contacts written to the store, events waiting for the clock."""
    seed: int
    start: datetime
    days: int
    people: list[Person] = field(default_factory=list)
    events: list[tuple[datetime, int, dict]] = field(default_factory=list)  # sorted by time
    _cursor: int = 0
    _serial: int = 0
    _seen_messages: int = 0
    _seen_handovers: int = 0
    # the CRM's deals: (time, export row) — each demo request opens one; the sales team wins some
    deal_rows: list[tuple[datetime, int, dict]] = field(default_factory=list)
    _deal_cursor: int = 0
    _announced: bool = False
    _fresh: list[tuple[datetime, str, str, dict]] = field(default_factory=list)  # reactions not yet announced

    def announce(self) -> list[tuple[datetime, str, str, dict]]:
        """(time, event, e-mail, properties) of the events not announced before: at the first
        call every event not yet ingested, later the reactions made up since
        (nurture.simulate.World)."""
        if not self._announced:
            self._announced, self._fresh = True, []
            return [(at, r["event"], r["email"], r["properties"]) for at, _, r in self.events[self._cursor:]]
        fresh, self._fresh = self._fresh, []
        return fresh

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    def _event(self, at: datetime, email: str, name: str, **props: Any) -> None:
        self._serial += 1
        record = {"event_id": f"demo-{self.seed}-{self._serial}", "email": email, "event": name,
                  "properties": props, "timestamp": at.isoformat()}
        self.events.append((at, self._serial, record))

    def _later(self, at: datetime, email: str, name: str, **props: Any) -> None:
        """An event caused by the simulation itself (a reaction): kept in time order."""
        if at > self.end:
            return
        self._serial += 1
        record = {"event_id": f"demo-{self.seed}-r{self._serial}", "email": email, "event": name,
                  "properties": props, "timestamp": at.isoformat()}
        bisect.insort(self.events, (at, self._serial, record), lo=self._cursor)
        if self._announced:
            self._fresh.append((at, name, email, props))

    def ingest_until(self, store: Store, now: datetime) -> int:
        """Track every event that happened up to `now` (the ingest path, idempotent)."""
        stop = self._cursor
        while stop < len(self.events) and self.events[stop][0] <= now:
            stop += 1
        batch = [(i, record) for i, (_, _, record) in enumerate(self.events[self._cursor:stop])]
        self._cursor = stop
        if batch:
            track_records(store, batch, source="demo", now=now)
            for _, record in batch:
                if record["event"] == "demo_request":
                    self._open_deal(record)
        return len(batch)

    def _open_deal(self, record: dict) -> None:
        """A demo request becomes a deal in the CRM a day later; almost half are won within two or
        three weeks (4,000–24,000 €), a fifth lost, the rest still open — the B2B revenue the report
        shows."""
        rng = random.Random(f"{self.seed}:deal:{record['event_id']}")
        at = datetime.fromisoformat(record["timestamp"]) + timedelta(hours=rng.uniform(12, 36))
        deal = f"D-{self.seed}-{len(self.deal_rows) + 1}"
        amount = round(rng.choice([4000, 6000, 9000, 12000, 18000, 24000]) * rng.uniform(0.9, 1.1), -1)
        row = {"deal_id": deal, "email": record["email"], "stage": "demo_scheduled", "amount": amount,
               "currency": "EUR", "closed_at": "", "pipeline": "sales"}
        self._deal_event(at, row)
        r = rng.random()
        if r < 0.7:
            self._deal_event(at + timedelta(days=rng.uniform(2, 5)), {**row, "stage": "proposal_sent"})
        if r < 0.45 or 0.7 <= r < 0.9:
            closed = at + timedelta(days=rng.uniform(5, 18))
            self._deal_event(closed, {**row, "stage": "won" if r < 0.45 else "lost", "closed_at": closed.isoformat()})

    def _deal_event(self, at: datetime, row: dict) -> None:
        if at <= self.end:
            self._serial += 1
            bisect.insort(self.deal_rows, (at, self._serial, row), lo=self._deal_cursor)

    def deals_until(self, now: datetime) -> list[dict]:
        """The CRM export rows of deals changed up to `now` (each deal's state as of then)."""
        stop = self._deal_cursor
        while stop < len(self.deal_rows) and self.deal_rows[stop][0] <= now:
            stop += 1
        latest = {row["deal_id"]: row for _, _, row in self.deal_rows[self._deal_cursor:stop]}
        self._deal_cursor = stop
        return list(latest.values())


def _pick(rng: random.Random, weighted: list[tuple]) -> tuple:
    return rng.choices(weighted, weights=[w[-1] for w in weighted])[0]


def _ascii(text: str) -> str:
    return text.lower().replace("ü", "ue").replace("ö", "oe").replace("ä", "ae").replace("í", "i").replace(" ", "")


def _phone(rng: random.Random, country: str) -> Optional[str]:
    if country in ("DE", "AT", "CH"):
        return "+49151" + "".join(str(rng.randint(0, 9)) for _ in range(8))
    if country == "GB":
        return "+447700" + "".join(str(rng.randint(0, 9)) for _ in range(6))
    if country == "US":
        return "+1415" + str(rng.randint(200, 999)) + "".join(str(rng.randint(0, 9)) for _ in range(4))
    return None


def generate(store: Store, *, seed: int, start: datetime, days: int = 30, contacts: int = 5000) -> Company:
    """Write contacts, consent, suppressions and the catalog; prepare the events."""
    rng = random.Random(seed)
    company = Company(seed, start, days)
    now = start
    with store.engine.begin() as conn:
        conn.execute(product_t.insert(), [dict(sku=s, name=n, category=c, price=p, consumption_days=d, active=True,
                                               rank=i, url=None, image_url=None, updated_at=start,
                                               attributes={"name_de": NAMES_DE[s], "category_de": CATEGORIES_DE[c]})
                                          for i, (s, n, c, p, d) in enumerate(PRODUCTS)])
        rows, plans = [], []
        for i in range(contacts):
            tz, country, locale, _ = _pick(rng, PLACES)
            first, last = rng.choice(FIRST), rng.choice(LAST)
            b2b = i % 4 == 0
            attrs: dict[str, Any] = {"source": rng.choice(["shop", "instagram", "google", "referral", "newsletter"])}
            if b2b:
                company_name = rng.choice(COMPANIES)
                domain = _ascii(company_name).replace("&", "") + ".example"
                attrs = {"source": rng.choice(["webinar", "linkedin", "google", "event"]), "company": company_name,
                         "role": _pick(rng, ROLES)[0], "industry": _pick(rng, INDUSTRIES)[0],
                         "company_size": rng.choice([8, 25, 60, 120, 250, 480, 900, 2500]),
                         "pain_point": rng.choice(PAIN_POINTS), "segment": "b2b"}
            else:
                domain = rng.choice(["example.com", "example.org", "example.net", "mail.example"])
            email = f"{_ascii(first)}.{_ascii(last)}.{i}@{domain}"
            signup = None if b2b or rng.random() > 0.22 else start + timedelta(days=rng.uniform(0, days - 1))
            # a third of the B2B leads arrive during the month, from the LinkedIn and search campaigns
            arrives = b2b and rng.random() < 0.33
            created = signup or (start + timedelta(days=rng.uniform(0, days - 1)) if arrives
                                 else start - timedelta(days=rng.uniform(20, 400)))
            if arrives:
                attrs["source"] = rng.choice(["linkedin", "linkedin", "google"])
            phone = _phone(rng, country) if not b2b and rng.random() < 0.6 else None
            rows.append(dict(email=email, phone=phone, first_name=first, last_name=last, timezone=tz, country=country,
                             locale=locale, lifecycle_stage="lead", score=0.0, attributes=attrs,
                             created_at=created, updated_at=created))
            company.people.append(Person(email, b2b, locale, country, tz, signup, rng.uniform(0.3, 1.7),
                                         attrs["source"], created))
            plans.append((rng.random(), rng.random(), rng.random(), created, signup, phone is not None))
        for part in chunks(rows, 2000):
            conn.execute(contact_t.insert(), list(part))
        ids = dict(conn.execute(select(contact_t.c.email, contact_t.c.id)).all())
        consents = []
        ledger: list[dict] = []  # every consent row, in order, written at once (append_consents)
        for person, (r_email, r_sms, r_bounce, created, signup, has_phone) in zip(company.people, plans):
            cid = ids[person.email]
            if signup is not None:  # double opt-in: pending at sign-up, most confirm within hours
                consents.append(("email", "pending", signup, False))
                if r_email < 0.85:
                    consents.append(("email", "granted", signup + timedelta(hours=r_sms * 20 + 0.1), True))
            elif r_email < 0.78:
                consents.append(("email", "granted", created, True))
            elif r_email < 0.84:
                consents.append(("email", "granted", created, True))
                consents.append(("email", "revoked", created + timedelta(days=10), False))
            elif r_email < 0.90:
                consents.append(("email", "pending", created, False))
            if has_phone and r_sms < 0.45:
                consents.append(("sms", "granted", created, True))
            if r_bounce > 0.55:  # ads consent (custom audiences) from the cookie banner / sign-up form
                consents.append(("ads", "granted", created, True))
            ledger.extend(dict(contact_id=cid, channel=channel, status=status, source="demo-signup", at=at,
                               policy_version="demo", confirmed=confirmed)
                          for channel, status, at, confirmed in consents)
            consents.clear()
            if r_bounce < 0.01:
                suppress(conn, reason="hard_bounce", at=created, contact_id=cid, address=person.email, channel="email")
        append_consents(conn, ledger)
    _history_and_funnels(company, rng)
    company.events.sort(key=lambda e: (e[0], e[1]))
    # history before the start is ingested at once (it is what the shop already knew)
    company.ingest_until(store, now)
    return company


def _purchase(company: Company, rng: random.Random, at: datetime, email: str, sku_row: tuple,
              qty: int = 1, order: Optional[str] = None) -> None:
    sku, name, category, price, consumption = sku_row
    props = {"order_id": order or f"O-{company._serial + 1}", "value": round(price * qty, 2), "sku": sku,
             "product_name": name, "category": category, "items": qty}
    if consumption:
        props["consumption_days"] = consumption
    company._event(at, email, "purchase", **props)


def _landing(company: Company, rng: random.Random, person: Person, at: datetime) -> None:
    """The page view that brought the contact: its URL carries the campaign's UTM parameters and
    the ad platform's click id — the lead source the report groups by."""
    source, medium, campaign, click = LANDINGS.get(person.source, (None, None, None, None))
    if source is not None and rng.random() < 0.03:
        source, medium, campaign, click = rng.choice(OFF_STANDARD)
    if person.b2b and person.source == "google":
        campaign = "b2b_search"
    query = [f"utm_source={source}", f"utm_medium={medium}", f"utm_campaign={campaign}"] if source else []
    if click:
        query.append(f"{click}={rng.getrandbits(64):016x}")
    url = "https://shop.example/" + ("business" if person.b2b else "") + ("?" + "&".join(query) if query else "")
    company._event(at, person.email, "page_view", url=url)


def ad_spend_rows(start: datetime, end: datetime, seed: int) -> list[dict]:
    """The ad platforms' daily spend for the paid landings, from 60 days before the demo to its end
    (`nurture import spend` reads it as a CSV export would be)."""
    rng = random.Random(f"{seed}:spend")
    rows, day = [], (start - timedelta(days=60)).date()
    while day <= end.date():
        for source, medium, campaign, daily in AD_SPEND:
            rows.append({"date": day.isoformat(), "source": source, "medium": medium, "campaign": campaign,
                         "amount": f"{daily * rng.uniform(0.8, 1.2):.2f}", "currency": "EUR"})
        day += timedelta(days=1)
    return rows


def _history_and_funnels(company: Company, rng: random.Random) -> None:
    start, days = company.start, company.days
    for person in company.people:
        email = person.email
        _landing(company, rng, person, person.signup_at - timedelta(minutes=2) if person.signup_at else person.created)
        if not person.b2b:
            # purchase history: customers, some of them lapsed for months (win-back)
            if rng.random() < 0.45:
                for _ in range(rng.randint(1, 3)):
                    at = start - timedelta(days=rng.uniform(5, 240))
                    _purchase(company, rng, at, email, rng.choice(PRODUCTS))
                if rng.random() < 0.5:
                    company._event(start - timedelta(days=rng.uniform(1, 60)), email, "email_open", campaign="newsletter")
            if person.signup_at is not None:
                company._event(person.signup_at, email, "form_submit", form="newsletter")
            # the 30 days: browsing → cart → checkout → purchase, with organic recovery
            for day in range(days):
                if rng.random() > 0.05 * person.interest:
                    continue
                at = start + timedelta(days=day, hours=rng.uniform(7, 23))
                if person.signup_at and at < person.signup_at:
                    continue
                viewed = [rng.choice(PRODUCTS) for _ in range(rng.randint(1, 3))]
                for k, p in enumerate(viewed):
                    company._event(at + timedelta(minutes=3 * k), email, "view_product", sku=p[0], product_name=p[1],
                                   category=p[2], price=p[3])
                if rng.random() > 0.38:
                    continue
                cart = [(p, rng.randint(1, 2)) for p in viewed[: rng.randint(1, len(viewed))]]
                value = round(sum(p[3] * q for p, q in cart), 2)
                t = at + timedelta(minutes=12)
                company._event(t, email, "add_to_cart", sku=cart[0][0][0], category=cart[0][0][2],
                               cart_value=value, item_count=sum(q for _, q in cart))
                if rng.random() < 0.30:  # checks out right away
                    company._event(t + timedelta(minutes=4), email, "start_checkout", cart_value=value)
                    if rng.random() < 0.8:
                        _purchase(company, rng, t + timedelta(minutes=9), email, cart[0][0], cart[0][1])
                elif rng.random() < 0.06:  # comes back by itself a day or two later
                    _purchase(company, rng, t + timedelta(hours=rng.uniform(20, 60)), email, cart[0][0], cart[0][1])
        else:
            if person.created and person.created > start:  # a new lead: it came for the whitepaper
                company._event(person.created + timedelta(minutes=1), email, "form_submit", form="whitepaper",
                               topic="marketing automation", pain_point=rng.choice(PAIN_POINTS))
            for day in range(days):
                at = start + timedelta(days=day, hours=rng.uniform(7, 18))
                if person.created and at < person.created:
                    continue
                r = rng.random()
                if r < 0.012 * person.interest:
                    company._event(at, email, "form_submit", form=rng.choice(["whitepaper", "webinar", "whitepaper"]),
                                   topic="marketing automation", pain_point=rng.choice(PAIN_POINTS))
                elif r < 0.03 * person.interest:
                    company._event(at, email, "view_page", path=rng.choice(["/pricing", "/features", "/pricing"]))
                elif r < 0.031 * person.interest:
                    company._event(at, email, "demo_request", source="website")


# What `react` reads after every moment, built once (a month of the demo runs it thousands of times).
_MESSAGES_SINCE = (select(message_t.c.id, message_t.c.status, message_t.c.journey, message_t.c.step_id,
                          message_t.c.channel, message_t.c.sent_at, message_t.c.contact_id, contact_t.c.email,
                          contact_t.c.attributes)
                   .select_from(message_t.join(contact_t, contact_t.c.id == message_t.c.contact_id))
                   .where(message_t.c.id > bindparam("seen")).order_by(message_t.c.id))
_HANDOVERS_SINCE = (select(handover_t.c.id, handover_t.c.created_at, contact_t.c.email)
                    .select_from(handover_t.join(contact_t, contact_t.c.id == handover_t.c.contact_id))
                    .where(handover_t.c.id > bindparam("seen"), handover_t.c.status != HOLDOUT)  # sales never saw those
                    .order_by(handover_t.c.id))


def react(company: Company, store: Store, now: datetime) -> dict[str, int]:
    """The world answers what was sent since the last call: opens, clicks, purchases,
    unsubscribes and bounces; sales calls MQLs that were handed over."""
    counts = {"open": 0, "click": 0, "purchase": 0, "unsubscribe": 0, "bounce": 0, "sales_contacted": 0}
    with store.engine.begin() as conn:
        for m in conn.execute(_MESSAGES_SINCE, {"seen": company._seen_messages}).all():
            if m.status != SENT:  # (read by id from the last one seen, not by status: no scan of all sent)
                continue
            company._seen_messages = max(company._seen_messages, m.id)
            rng = random.Random(f"{company.seed}:{m.id}")
            sent_at = m.sent_at if m.sent_at.tzinfo else m.sent_at.replace(tzinfo=timezone.utc)
            if m.channel == "email":
                if rng.random() < BOUNCE:
                    suppress(conn, reason="hard_bounce", at=sent_at + timedelta(minutes=1), contact_id=m.contact_id,
                             address=m.email, channel="email")
                    counts["bounce"] += 1
                    continue
                if rng.random() < OPEN:
                    opened = sent_at + timedelta(hours=rng.uniform(0.1, 20))
                    company._later(opened, m.email, "email_open", campaign=m.journey, step=m.step_id)
                    counts["open"] += 1
                    if rng.random() < CLICK / OPEN:
                        company._later(opened + timedelta(minutes=1), m.email, "email_click", campaign=m.journey,
                                       step=m.step_id)
                        counts["click"] += 1
                if rng.random() < UNSUBSCRIBE:
                    at = sent_at + timedelta(hours=rng.uniform(0.2, 30))
                    suppress(conn, reason="unsubscribed", at=at, contact_id=m.contact_id, channel="email")
                    record_consent(conn, m.contact_id, "email", "revoked", source="demo-unsubscribe", at=at,
                                   policy_version="demo")
                    counts["unsubscribe"] += 1
            if m.journey == "b2b_nurture" and m.step_id.startswith("demo_invite") and rng.random() < 0.35:
                company._later(sent_at + timedelta(hours=rng.uniform(2, 60)), m.email, "demo_request", source="email")
            if rng.random() < PURCHASE_AFTER.get(m.journey, 0.0) * STEP_EFFECT.get(m.step_id, 1.0):
                product = rng.choice(PRODUCTS)
                price = round(product[3] * rng.randint(1, 2), 2)
                offer: dict[str, Any] = {}
                if m.step_id in COUPONS:  # the code in the message: paid = price − discount
                    code, percent = COUPONS[m.step_id]
                    offer = {"coupon": code, "discount": round(price * percent / 100, 2)}
                company._later(sent_at + timedelta(hours=rng.uniform(0.5, 12)), m.email, "purchase",
                               order_id=f"M-{m.id}", value=round(price - offer.get("discount", 0.0), 2),
                               sku=product[0], product_name=product[1], category=product[2], campaign=m.journey,
                               **offer, **({"consumption_days": product[4]} if product[4] else {}))
                counts["purchase"] += 1
        for h in conn.execute(_HANDOVERS_SINCE, {"seen": company._seen_handovers}).all():
            company._seen_handovers = max(company._seen_handovers, h.id)
            rng = random.Random(f"{company.seed}:handover:{h.id}")
            created = h.created_at if h.created_at.tzinfo else h.created_at.replace(tzinfo=timezone.utc)
            r = rng.random()
            if r < 0.85:  # most MQLs get a call, most of those within the SLA
                delay = rng.uniform(1, 20) if r < 0.65 else rng.uniform(26, 70)
                company._later(created + timedelta(hours=delay), h.email, "sales_contacted", owner="sales-team")
                counts["sales_contacted"] += 1
    return counts
