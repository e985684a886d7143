"""Pydantic models of the journey, policy and condition language (the public YAML contract).

Models validate shape and values; cross-references (templates, segments, unique step ids)
are checked in `spec.validate`, where every error of a run is collected with its location.
"""
from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any, ClassVar, Literal, Optional, Union
from zoneinfo import ZoneInfo, available_timezones

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from nurture.durations import DurationTooLong, parse_duration
from nurture.number_text import number_of_text

CHANNELS = ("email", "sms", "whatsapp")
CONSENT_CHANNELS = ("email", "sms", "whatsapp", "ads")
Channel = Literal["email", "sms", "whatsapp"]
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
PURPOSES = ("marketing", "transactional")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Strict(BaseModel):
    # .inf and .nan are floats to YAML: no number field takes them (a NaN compares false to
    # everything, and JSON, SQLite and every report refuse or mangle both)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


def _hhmm(value: Any) -> str:
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f"'{value}' is not a time of day: write it as \"HH:MM\", e.g. \"08:00\"")
    return value


def hhmm_to_time(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except Exception:
        from nurture.spec.errors import did_you_mean
        hint = did_you_mean(value, available_timezones())
        raise ValueError(f"unknown time zone '{value}'" + (f" ({hint})" if hint else "")) from None
    return value


# ---------------------------------------------------------------- conditions

def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number: .inf and .nan cannot be compared or stored")
    return value


# A value a condition compares with or an update step stores: .inf and .nan passed validation,
# then failed every tick of the journey (JSON refuses them).
Scalar = Annotated[Union[bool, int, float, str, None], BeforeValidator(_finite)]
Bound = Annotated[Union[int, float, str, None], BeforeValidator(_finite)]

# all/any/not levels one condition may nest. Conditions compile into one SQL expression, and
# SQLite's parser gives up ("parser stack overflow") near 27 nested `not`s around an event
# test: a deeper condition would pass validation and then fail every tick. Real ones use 2-4.
MAX_CONDITION_DEPTH = 16


# The contact's own columns a condition names (`attribute: {country: DE}`, `score:`), by the
# kind of value each holds; every other name is a JSON attribute. A column compares with values
# of its kind only: PostgreSQL refused `score >= '50'` (double precision >= character varying)
# on every tick, where SQLite's column affinity read the text as 50.
CONTACT_COLUMNS = {"email": "text", "phone": "text", "first_name": "text", "last_name": "text",
                   "timezone": "text", "country": "text", "locale": "text", "lifecycle_stage": "text",
                   "score": "number", "created_at": "time", "updated_at": "time"}


def column_value(column: str, value: Any) -> Any:
    """A condition's value as the kind `column` holds (CONTACT_COLUMNS): for a number, a number
    or text that reads as one (nurture.number_text); for a time, an ISO 8601 date or time (UTC
    when it names no offset); for text, text (a number as written, a boolean true / false).
    ValueError, in words for the marketer, when it is none."""
    kind = CONTACT_COLUMNS[column]
    if kind == "number":
        number = None if isinstance(value, bool) else value if isinstance(value, (int, float)) else number_of_text(value)
        if number is None:
            raise ValueError(f"'{column}' is a number, and {value!r} does not read as one "
                             f"(write e.g. {column}: {{gte: 50}})")
        return number
    if kind == "time":
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None:
            raise ValueError(f"'{column}' is a time, and {value!r} is no ISO 8601 date or time "
                             f"(write one in quotes, e.g. {column}: {{gte: \"2026-01-31\"}})")
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


RECORDED = "recorded"  # validation context: a spec as recorded by an earlier version of Nurture


def check_column_comparison(column: str, cmp: "Comparison", at: tuple = ()) -> None:
    """Refuse a comparison of a contact column that holds a value of another kind, or asks a
    number or a time to `contain` text: an error located at that value (`at`: the comparison's
    place in the field, for model_errors)."""
    for op, value in cmp.operators().items():
        if op == "contains" and CONTACT_COLUMNS[column] != "text":
            raise PydanticCustomError("value_error", f"'{column}' is a {CONTACT_COLUMNS[column]}, and 'contains' "
                                      "finds text (compare it with eq, ne, gt, gte, lt, lte, in or not_in)",
                                      {"inside": (*at, op)})
        if op in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"):
            items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                try:
                    if item is not None:
                        column_value(column, item)
                except ValueError as exc:
                    inside = (*at, op) if i is None else (*at, op, i)
                    raise PydanticCustomError("value_error", str(exc), {"inside": inside}) from None


class Comparison(Strict):
    eq: Scalar = None
    ne: Scalar = None
    gt: Bound = None
    gte: Bound = None
    lt: Bound = None
    lte: Bound = None
    in_: Optional[list[Scalar]] = Field(default=None, alias="in")
    not_in: Optional[list[Scalar]] = None
    exists: Optional[bool] = None
    contains: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `cart_value: 20` means `cart_value: {eq: 20}`; `tags: [a, b]` means `in`.
        if isinstance(value, list):
            return {"in": value}
        if not isinstance(value, dict):
            return {"eq": value}
        if not value:
            raise ValueError("a comparison needs an operator: eq, ne, gt, gte, lt, lte, in, not_in, exists, contains")
        return value

    def operators(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(by_alias=True, exclude_unset=True).items()}


class CountCmp(Strict):
    gte: Optional[int] = None
    gt: Optional[int] = None
    lte: Optional[int] = None
    lt: Optional[int] = None
    eq: Optional[int] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"gte": value} if isinstance(value, int) else value


class ConsentCond(Strict):
    channel: Literal["email", "sms", "whatsapp", "ads"]
    purpose: Literal["marketing", "transactional"] = "marketing"
    status: Literal["granted", "revoked", "pending"] = "granted"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"channel": value} if isinstance(value, str) else value


class Condition(Strict):
    """One node of the condition language; several kinds in one mapping are all required."""
    all: Optional[list["Condition"]] = None
    any: Optional[list["Condition"]] = None
    not_: Optional["Condition"] = Field(default=None, alias="not")
    attribute: Optional[dict[str, Comparison]] = None
    property: Optional[dict[str, Comparison]] = None
    event: Optional[str] = None
    within: Optional[timedelta] = None
    since: Optional[Literal["enrollment", "ever"]] = None
    count: Optional[CountCmp] = None
    where: Optional[dict[str, Comparison]] = None
    score: Optional[Comparison] = None
    consent: Optional[ConsentCond] = None
    segment: Optional[str] = None

    _within = field_validator("within", mode="before")(lambda cls, v: None if v is None else _duration(v))

    # A journey version recorded before these checks is read back as it was (RECORDED), and
    # compiled to compare what its values mean (conditions._column_values).
    @field_validator("attribute")
    @classmethod
    def _columns(cls, value: Optional[dict[str, Comparison]], info: ValidationInfo) -> Optional[dict[str, Comparison]]:
        if not (info.context or {}).get(RECORDED):
            for name, cmp in (value or {}).items():
                if name in CONTACT_COLUMNS:
                    check_column_comparison(name, cmp, (name,))
        return value

    @field_validator("score")
    @classmethod
    def _score(cls, value: Optional[Comparison], info: ValidationInfo) -> Optional[Comparison]:
        if value is not None and not (info.context or {}).get(RECORDED):
            check_column_comparison("score", value)
        return value

    @model_validator(mode="after")
    def _shape(self) -> "Condition":
        kinds = [k for k in ("all", "any", "not_", "attribute", "property", "event", "score",
                             "consent", "segment") if getattr(self, k) is not None]
        if not kinds:
            raise ValueError("a condition needs one of: all, any, not, attribute, property, event, "
                             "score, consent, segment")
        if self.event is None and any(getattr(self, k) is not None
                                      for k in ("within", "since", "count", "where")):
            raise ValueError("within, since, count and where belong to an 'event' condition")
        for group in ("all", "any"):
            if getattr(self, group) == []:
                raise ValueError(f"'{group}' needs at least one condition")
        if condition_depth(self) > MAX_CONDITION_DEPTH:
            raise ValueError(f"all/any/not nested more than {MAX_CONDITION_DEPTH} levels deep: "
                             "simplify this condition")
        return self


def condition_depth(cond: Condition) -> int:
    """How many all/any/not levels `cond` nests. Validation is bottom-up and refuses a level
    beyond the limit, so this never walks deeper than MAX_CONDITION_DEPTH + 1."""
    children = [*(cond.all or []), *(cond.any or []), *([cond.not_] if cond.not_ is not None else [])]
    return 1 + max(condition_depth(c) for c in children) if children else 0


# ---------------------------------------------------------------- steps


class Offer(Strict):
    """A coupon the message carries, for the report's offer costs: its `code` (matched against
    a purchase's `coupon` / `code` property) and what one redemption costs — a fixed `value`
    (money) or a `percent` off. A purchase's own `discount` property, when tracked, wins."""
    code: Optional[str] = None
    value: Optional[float] = Field(default=None, ge=0)
    percent: Optional[float] = Field(default=None, gt=0, lt=100)

    @model_validator(mode="after")
    def _one_cost(self) -> "Offer":
        if self.value is not None and self.percent is not None:
            raise ValueError("an offer costs a fixed 'value' or a 'percent', not both")
        if self.code is None and self.value is None and self.percent is None:
            raise ValueError("an offer needs a 'code', a 'value' or a 'percent'")
        return self


class SendSpec(Strict):
    """A message on one `channel`, or on the first of `channels` (a priority list: whatsapp, sms,
    email) whose checks allow it, decided in the send transaction. With `channels`, `channel`
    is the first of them."""
    channel: Channel
    template: str
    subject: Optional[str] = None
    purpose: Literal["marketing", "transactional"] = "marketing"
    preheader: Optional[str] = None
    # Reporting only: the coupon this message carries. Left out of dumps while unset, so adding the
    # key to the language did not change the version hash of any existing journey.
    offer: Optional[Offer] = Field(default=None, exclude_if=lambda v: v is None)
    # Channel priority with fallback (left out of dumps while unset, like `offer`).
    channels: Optional[tuple[Channel, ...]] = Field(default=None, exclude_if=lambda v: v is None)
    # WhatsApp: the approved template (Twilio Content API, HX…) sent outside the 24-hour session
    # window, and its placeholders ({"1": "{{ contact.first_name }}"}: Jinja, the message's context).
    content_sid: Optional[str] = Field(default=None, exclude_if=lambda v: v is None)
    content_variables: Optional[dict[str, str]] = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="before")
    @classmethod
    def _first_channel(cls, value: Any) -> Any:
        if isinstance(value, dict) and "channels" in value:
            if "channel" in value:
                raise ValueError("a send has either 'channel' or 'channels' (a priority list), not both")
            channels = value["channels"]
            if not isinstance(channels, list) or not channels:
                raise ValueError("'channels' is a list of channels in order of priority, e.g. [whatsapp, sms, email]")
            return {**value, "channel": channels[0]}
        return value

    @property
    def options(self) -> tuple[str, ...]:
        """The channels to try, in order."""
        return tuple(self.channels) if self.channels else (self.channel,)

    @model_validator(mode="after")
    def _subject(self) -> "SendSpec":
        options = self.options
        if len(set(options)) != len(options):
            raise ValueError("'channels' names a channel twice")
        if "email" in options and not self.subject:
            raise ValueError("an e-mail send needs a subject" if len(options) == 1
                             else "'channels' includes email: the send needs a subject")
        if "email" not in options and self.subject:
            raise ValueError({("sms",): "an SMS has no subject", ("whatsapp",): "a WhatsApp message has no subject"}
                             .get(options, "only e-mail has a subject, and 'channels' has no email"))
        if self.content_sid is not None:
            if "whatsapp" not in options:
                raise ValueError("'content_sid' is a WhatsApp template: the send has no whatsapp channel")
            if not _CONTENT_SID.match(self.content_sid):
                raise ValueError(f"content_sid '{self.content_sid}' is not a Twilio Content SID (HX + 32 hex digits)")
        if self.content_variables is not None and self.content_sid is None:
            raise ValueError("'content_variables' fill the placeholders of a 'content_sid' template: add the content_sid")
        return self


class WaitUntil(Strict):
    time: str
    weekdays: Optional[list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]]] = None

    _t = field_validator("time", mode="before")(lambda cls, v: _hhmm(v))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"time": value} if isinstance(value, str) else value


class Branch(Strict):
    when: Condition
    then: list["Step"] = Field(default_factory=list)
    else_: list["Step"] = Field(default_factory=list, alias="else")


class WaitFor(Strict):
    event: str
    within: timedelta
    where: Optional[dict[str, Comparison]] = None
    then: list["Step"] = Field(default_factory=list)
    timeout: list["Step"] = Field(default_factory=list)

    _within = field_validator("within", mode="before")(lambda cls, v: _duration(v))


class SplitArm(Strict):
    name: str
    weight: float = Field(gt=0)
    steps: list["Step"] = Field(default_factory=list)


def _share(value: Any) -> Any:
    """`95%` or 0.95."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"'{value}' is not a percentage") from None
    return value


class AutoWinner(Strict):
    """On a `split` step: once every arm has `min_per_arm` members and one arm beats every other
    on `metric` at `confidence`, new arrivals go to that arm. Nurture records the decision as
    `decided: <arm>` in a new journey version; writing `decided:` yourself ends a test by hand."""
    metric: Literal["conversion_rate", "revenue_per_recipient"] = "conversion_rate"
    min_per_arm: int = Field(default=100, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    decided: Optional[str] = Field(default=None, exclude_if=lambda v: v is None)

    _c = field_validator("confidence", mode="before")(lambda cls, v: _share(v))


class Update(Strict):
    attributes: Optional[dict[str, Scalar]] = None
    lifecycle_stage: Optional[str] = None

    @model_validator(mode="after")
    def _something(self) -> "Update":
        if not self.attributes and not self.lifecycle_stage:
            raise ValueError("an update sets 'attributes' or 'lifecycle_stage'")
        return self


class Exit(Strict):
    reason: str = "exit_step"


STEP_KINDS = ("wait", "wait_until", "send", "branch", "wait_for", "split", "update", "handover", "exit")


class Step(Strict):
    id: str
    wait: Optional[timedelta] = None
    wait_until: Optional[WaitUntil] = None
    send: Optional[SendSpec] = None
    branch: Optional[Branch] = None
    wait_for: Optional[WaitFor] = None
    split: Optional[list[SplitArm]] = None
    update: Optional[Update] = None
    handover: Optional[dict[str, Any]] = None
    exit: Optional[Exit] = None
    # On a split only. Left out of dumps while unset (no version change for existing journeys).
    auto_winner: Optional[AutoWinner] = Field(default=None, exclude_if=lambda v: v is None)

    _wait = field_validator("wait", mode="before")(lambda cls, v: None if v is None else _duration(v))

    @model_validator(mode="before")
    @classmethod
    def _exit_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "exit" in value and value["exit"] in (None, True):
            value = {**value, "exit": {}}
        if isinstance(value, dict) and isinstance(value.get("exit"), str):
            value = {**value, "exit": {"reason": value["exit"]}}
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"step id '{value}' must be lowercase letters, digits and _ (start with a letter)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "Step":
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step has exactly one of: {', '.join(STEP_KINDS)}"
                             + (f" (found {', '.join(kinds)})" if kinds else ""))
        if self.split is not None and not self.split:
            raise ValueError("a split needs at least one arm")
        if self.split:
            total = sum(a.weight for a in self.split)
            if abs(total - 100) > 1e-6:
                share = " and ".join(f"{a.name} {a.weight / total * 100:.4g}" for a in self.split)
                raise ValueError(f"split weights are percentages and must sum to 100; these sum to {total:g} "
                                 f"(the same shares: {share})")
        if self.auto_winner is not None:
            if self.split is None:
                raise ValueError("auto_winner belongs to a split step")
            if len(self.split) < 2:
                raise ValueError("auto_winner needs a split with at least two arms")
            if self.auto_winner.decided is not None and self.auto_winner.decided not in [a.name for a in self.split]:
                raise ValueError(f"auto_winner.decided '{self.auto_winner.decided}' is not an arm of this split")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)


# ---------------------------------------------------------------- journey


class Trigger(Strict):
    """Enroll on an `event`, or (no event) when a contact is in a `segment` / matches `when`:
    a condition trigger is evaluated in SQL on every tick (on SQLite only for the contacts that
    may match, when it has an anchor: nurture.runtime.when_candidates). A `date` trigger
    enrolls at a moment computed from a contact date (birthday, renewal_date): `offset` before
    or after it, at the local time `at`, once or `every: year` (nurture.date_occurrences)."""
    event: Optional[str] = None
    segment: Optional[str] = None
    when: Optional[Condition] = None
    where: Optional[Condition] = None
    lookback: timedelta = timedelta(days=1)
    # The date trigger's keys are left out of dumps while unset, so adding them to the language
    # did not change the version hash of any existing journey (like `offer` on SendSpec).
    date: Optional[str] = Field(default=None, exclude_if=lambda v: v is None)
    offset: Optional[timedelta] = Field(default=None, exclude_if=lambda v: v is None)
    at: Optional[str] = Field(default=None, exclude_if=lambda v: v is None)
    every: Optional[Literal["year"]] = Field(default=None, exclude_if=lambda v: v is None)

    # Contact columns that hold a moment (the anniversary of a signup); the others are not dates.
    DATE_COLUMNS: ClassVar[tuple[str, ...]] = ("created_at", "updated_at")
    OTHER_COLUMNS: ClassVar[tuple[str, ...]] = ("email", "phone", "first_name", "last_name", "timezone",
                                                "country", "locale", "lifecycle_stage", "score")
    DATE_KEYS: ClassVar[tuple[str, ...]] = ("offset", "at", "every")

    _lookback = field_validator("lookback", mode="before")(lambda cls, v: _duration(v))
    _at = field_validator("at", mode="before")(lambda cls, v: _hhmm(v))

    @field_validator("date", mode="before")
    @classmethod
    def _date_name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError(f"'{value}' is not an attribute name: name the contact attribute or column that "
                             "holds the date, e.g. date: birthday")
        if value in cls.OTHER_COLUMNS:
            raise ValueError(f"'{value}' is a contact column that holds no date: name a date attribute "
                             f"(e.g. birthday) or one of the date columns {', '.join(cls.DATE_COLUMNS)}")
        return value

    @field_validator("offset", mode="before")
    @classmethod
    def _signed_offset(cls, value: Any) -> Any:
        # `-3d` = three days before the date, `+1d` or `1d` = one day after
        if isinstance(value, timedelta):
            return value
        if value == 0:
            return timedelta(0)
        text = value.strip() if isinstance(value, str) else ""
        sign = -1 if text.startswith("-") else 1
        body = text[1:] if text[:1] in ("-", "+") else text
        try:
            return sign * parse_duration(body)
        except ValueError:
            raise ValueError(f"'{value}' is not an offset: write a signed duration, e.g. -3d (three days "
                             "before the date), +1d (one day after) or -2h") from None

    @model_validator(mode="after")
    def _one_kind(self) -> "Trigger":
        kinds = [k for k in ("event", "segment", "when", "date") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a trigger has exactly one of: event, segment, when, date"
                             + (f" (found {', '.join(kinds)})" if kinds else ""))
        if self.date is not None and self.where is not None and self._tests_property(self.where):
            raise ValueError("a date trigger has no event: its 'where' can test the contact "
                             "(attribute, segment, …), not an event 'property'")
        if self.date is None:
            stray = [k for k in self.DATE_KEYS if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} belong{'s' if len(stray) == 1 else ''} to a date trigger "
                                 "(trigger: {date: birthday, offset: -3d, at: \"09:00\", every: year})")
        return self

    @classmethod
    def _tests_property(cls, cond: Condition) -> bool:
        children = [*(cond.all or []), *(cond.any or []), *([cond.not_] if cond.not_ is not None else [])]
        return cond.property is not None or any(cls._tests_property(c) for c in children)

    @property
    def date_offset(self) -> timedelta:
        """A date trigger's offset from the date (0 when unset)."""
        return self.offset if self.offset is not None else timedelta(0)

    @property
    def local_time(self) -> time:
        """The local time of day a date trigger fires at (09:00 when unset)."""
        return hhmm_to_time(self.at or "09:00")

    def condition(self) -> Optional[Condition]:
        """The contact condition of a segment/when trigger (with `where`), None for events; for a
        date trigger its `where` (None without one)."""
        if self.event is not None:
            return None
        if self.date is not None:
            return self.where
        parts = [Condition(segment=self.segment) if self.segment else self.when]
        if self.where is not None:
            parts.append(self.where)
        return parts[0] if len(parts) == 1 else Condition.model_validate({"all": parts})


class Goal(Strict):
    event: str
    within: timedelta
    where: Optional[dict[str, Comparison]] = None

    _within = field_validator("within", mode="before")(lambda cls, v: _duration(v))


MIN_SENDING_MINUTES = 15  # three 5-minute ticks: a shorter open part of the day may be missed by every tick


class QuietHours(Strict):
    start: str
    end: str

    _s = field_validator("start", "end", mode="before")(lambda cls, v: _hhmm(v))

    @model_validator(mode="after")
    def _room_to_send(self) -> "QuietHours":
        """The day must keep some time to send in: a message deferred to the window's end is
        picked up by the next tick, and with 23:59 of quiet hours that tick is quiet again —
        the message waited for ever. (`start` equal to `end`: no quiet hours.)"""
        start, end = (int(t[:-3]) * 60 + int(t[-2:]) for t in (self.start, self.end))
        open_minutes = (start - end) % (24 * 60)
        if start != end and open_minutes < MIN_SENDING_MINUTES:
            raise ValueError(f"quiet hours {self.start}–{self.end} leave {open_minutes} minute(s) a day to send in; "
                             f"leave at least {MIN_SENDING_MINUTES} (ticks run every few minutes), or set start "
                             "and end equal for no quiet hours")
        return self


class FrequencyCap(Strict):
    channel: Literal["email", "sms", "whatsapp", "any"] = "any"
    max: int = Field(ge=0)
    per: timedelta

    _per = field_validator("per", mode="before")(lambda cls, v: _duration(v))


class FixedCost(Strict):
    """A cost of running a journey that no message causes (a tool, an agency fee, design
    work), spread over the period the report covers: `per` day, week, month or year, or `once`."""
    name: str
    amount: float = Field(ge=0)
    per: Literal["day", "week", "month", "year", "once"] = "month"


OBJECTIVE_METRICS = {
    # journey objectives
    "journey": ("conversions", "conversion_rate", "revenue", "incremental_revenue", "cost", "cac", "roi",
                "incremental_roi", "recipients", "clicks", "click_rate", "unsubscribe_rate", "mqls",
                "demo_requests"),
    # project objectives (policies.yaml)
    "project": ("leads", "mqls", "sqls", "customers", "revenue", "spend", "cost_per_lead", "cac", "roi",
                "mql_to_sql_rate", "lead_velocity_rate", "demo_requests", "conversions", "clv",
                "time_to_first_value_days", "speed_to_lead_minutes", "speed_to_sales_minutes"),
}
# metrics where lower is better (on track when the forecast is at or below the target); a
# `spend` objective is a budget: at most that much by the deadline
LOWER_IS_BETTER = ("cost", "cac", "cost_per_lead", "unsubscribe_rate", "spend", "time_to_first_value_days",
                   "speed_to_lead_minutes", "speed_to_sales_minutes")


class Period(Strict):
    from_: date = Field(alias="from")
    to: date

    @model_validator(mode="after")
    def _order(self) -> "Period":
        if self.to < self.from_:
            raise ValueError("a period's 'to' lies before its 'from'")
        return self


class Objective(Strict):
    """A SMART goal: a measurable `metric`, a `target` (a number, or a change such as `+20%`
    against the `baseline` period), a `deadline` (date), who owns it, and from when it counts
    (`start`, default: the baseline's end + 1 day, else the journey's first run)."""
    metric: str
    target: Union[float, str]
    deadline: date
    owner: Optional[str] = None
    name: Optional[str] = None
    start: Optional[date] = None
    baseline: Optional[Period] = None

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a target is a number, or a change such as +20% against the baseline")
        if isinstance(value, str):
            text = value.strip().replace(" ", "")
            if re.fullmatch(r"[+-]\d+(\.\d+)?%", text):
                return text
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"target '{value}' is not a number or a change such as +20%") from None
        return value

    @model_validator(mode="after")
    def _measurable(self) -> "Objective":
        if isinstance(self.target, float) and self.target != self.target:
            raise ValueError("a target is a finite number")
        if self.relative is not None and self.baseline is None:
            raise ValueError(f"a relative target ({self.target}) needs a 'baseline: {{from, to}}' period")
        if self.start is not None and self.deadline <= self.start:
            raise ValueError("the deadline must lie after the start")
        return self

    @property
    def relative(self) -> Optional[float]:
        """A relative target as a factor change (`+20%` → 0.2), else None."""
        return float(self.target[:-1]) / 100 if isinstance(self.target, str) else None


def _reentry(value: Any) -> Union[str, timedelta]:
    if value in ("never", "always"):
        return value
    try:
        return _duration(value)
    except DurationTooLong:
        raise
    except ValueError:
        raise ValueError(f"reentry is 'never', 'always' or a duration such as 7d, not '{value}'") from None


def _percent(value: Any) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        value = float(value.strip()[:-1]) / 100
    value = float(value)
    if not 0 <= value < 1:
        raise ValueError("holdout is a share below 100%, e.g. 10%")
    return value


class Journey(Strict):
    name: str
    description: str = ""
    topic: Optional[str] = None  # preference-center topic; contacts who opted out of it are not messaged
    trigger: Trigger
    reentry: Union[Literal["never", "always"], timedelta] = "never"
    exit_when: list[Condition] = Field(default_factory=list)
    goal: Optional[Goal] = None
    holdout: float = 0.0
    quiet_hours: Optional[QuietHours] = None
    frequency_cap: list[FrequencyCap] = Field(default_factory=list)
    # Reporting only: costs beyond messages; left out of dumps while empty (no version change).
    fixed_costs: list[FixedCost] = Field(default_factory=list, exclude_if=lambda v: not v)
    # Reaches contacts the policies' `sunset` rule stops (a re-engagement journey such as win-back).
    reach_sunset: bool = Field(default=False, exclude_if=lambda v: not v)
    # Reporting only: SMART goals (checked by `nurture validate`, measured by the report).
    objectives: list[Objective] = Field(default_factory=list, exclude_if=lambda v: not v)
    steps: list[Step]

    _r = field_validator("reentry", mode="before")(lambda cls, v: _reentry(v))
    _h = field_validator("holdout", mode="before")(lambda cls, v: _percent(v))

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, value: list[Step]) -> list[Step]:
        if not value:
            raise ValueError("a journey needs at least one step")
        return value


# ---------------------------------------------------------------- policies


class Sunset(Strict):
    """Marketing stops for contacts known longer than `after` who did none of `without` in that
    time (reason `sunset`); a journey with `reach_sunset: true` may still write to them."""
    after: timedelta
    without: list[str] = Field(default_factory=lambda: ["email_open", "email_click", "purchase"], min_length=1)

    _after = field_validator("after", mode="before")(lambda cls, v: _duration(v))


class Retention(Strict):
    """How long each kind of record is kept (unset: for good); `nurture purge` and the hygiene
    flow delete what is older."""
    events: Optional[timedelta] = None
    messages: Optional[timedelta] = None
    message_bodies: Optional[timedelta] = None  # outbox files and stored bodies
    pending_contacts: Optional[timedelta] = None  # contacts whose consent never left `pending`
    sync_records: Optional[timedelta] = None
    erasure_records: Optional[timedelta] = None

    _d = field_validator("events", "messages", "message_bodies", "pending_contacts", "sync_records",
                         "erasure_records", mode="before")(lambda cls, v: None if v is None else _duration(v))


class Sender(Strict):
    """Who sends: the legal footer of every marketing e-mail (Impressum, CAN-SPAM address)."""
    company: Optional[str] = None
    address: Optional[str] = None
    register_: Optional[str] = Field(default=None, alias="register")  # the commercial register entry
    represented_by: Optional[str] = None
    contact: Optional[str] = None


class UtmPolicy(Strict):
    """Allowed values per UTM parameter (compared case-insensitively); a parameter not listed
    is not checked."""
    source: Optional[list[str]] = None
    medium: Optional[list[str]] = None
    campaign: Optional[list[str]] = None
    content: Optional[list[str]] = None
    term: Optional[list[str]] = None


def _form_id(value: str) -> str:
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise ValueError(f"'{value}' is not a Meta form id: write its digits, quoted, e.g. \"1234567890123\"")
    return value


def _form_name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name or not name.isprintable():
        raise ValueError("a form name must be non-empty text on one line, e.g. whitepaper")
    return name


class LeadForms(Strict):
    """Lead-form integrations (Meta Lead Ads, docs/lead-ads.md): which form questions are consent
    questions, per channel — `consent: {email: [email_opt_in], sms: [sms_opt_in]}`. A question
    not named here is an ordinary answer (an attribute); none named: no consent is recorded.
    `forms` names Meta's forms by id — `forms: {"1234567890123": whitepaper}` — for the lead's
    `form_submit` event property `form` (what journeys filter on); an unnamed form has none."""
    consent: dict[Literal["email", "sms", "whatsapp", "ads"], list[str]] = Field(default_factory=dict)
    forms: dict[Annotated[str, AfterValidator(_form_id)], Annotated[str, BeforeValidator(_form_name)]] = \
        Field(default_factory=dict)


# The e-mails double opt-in sends (nurture.send.system_mail), step -> template under
# templates/email/: a policy that asks for e-mail double opt-in needs both.
DOUBLE_OPT_IN_TEMPLATES = {"confirm": "system/confirm", "reminder": "system/confirm_reminder"}
# The text SMS double opt-in sends ("Reply START to confirm"), step -> template under
# templates/sms/: one request, no reminder (a second unanswered text is no longer a request).
SMS_DOUBLE_OPT_IN_TEMPLATES = {"confirm": "system/confirm"}


class Policies(Strict):
    version: str = "1"
    timezone: str = "UTC"
    # WhatsApp without its own entry keeps the SMS hours (nurture.runtime.context.quiet_window).
    quiet_hours: dict[Literal["email", "sms", "whatsapp"], QuietHours] = Field(default_factory=lambda: {
        "email": QuietHours(start="21:00", end="08:00"),
        "sms": QuietHours(start="20:00", end="09:00"),
    })
    frequency_caps: list[FrequencyCap] = Field(default_factory=lambda: [
        FrequencyCap(channel="email", max=3, per=timedelta(days=7)),
        FrequencyCap(channel="sms", max=2, per=timedelta(days=7)),
        FrequencyCap(channel="any", max=4, per=timedelta(days=7)),
    ])
    on_cap: Literal["defer", "skip"] = "defer"
    double_opt_in: dict[Literal["email", "sms", "whatsapp"], list[Literal["marketing", "transactional"]]] = \
        Field(default_factory=lambda: {"email": ["marketing"]})
    pending_consent_expires: timedelta = timedelta(days=30)
    unit_costs: dict[Literal["email", "sms", "whatsapp"], float] = Field(
        default_factory=lambda: {"email": 0.001, "sms": 0.05, "whatsapp": 0.03})
    # Reporting: the project's money (ISO 4217) and the locale numbers are shown in (None: 1,234.56 €).
    currency: str = "EUR"
    locale: Optional[str] = None
    # Lead sources: the UTM values the team agreed on; others are listed in the report.
    utm: Optional["UtmPolicy"] = None
    # Project-wide SMART goals (leads, MQLs, CAC …), measured by the report.
    objectives: list[Objective] = Field(default_factory=list)
    # Privacy and compliance (docs/privacy.md)
    sunset: Optional[Sunset] = None
    retention: Retention = Field(default_factory=Retention)
    sender: Optional[Sender] = None
    keep_attributes: Optional[list[str]] = None
    lead_forms: LeadForms = Field(default_factory=LeadForms)

    _tz = field_validator("timezone")(lambda cls, v: check_timezone(v))

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"currency '{value}' is not an ISO 4217 code such as EUR, USD, GBP")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        from babel import Locale, UnknownLocaleError
        try:
            Locale.parse(value.replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            raise ValueError(f"unknown locale '{value}' (write it as de, de_DE, en_GB, fr …)") from None
        return value
    _exp = field_validator("pending_consent_expires", mode="before")(lambda cls, v: _duration(v))

    def needs_double_opt_in(self, channel: str, purpose: str) -> bool:
        return purpose in self.double_opt_in.get(channel, [])


for _model in (Condition, Branch, WaitFor, SplitArm, Step, Trigger):
    _model.model_rebuild()
