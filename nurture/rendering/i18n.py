"""Localized messages: gettext catalogs per locale and number, money and date filters, in the
recipient's own locale.

Templates (and subjects) write their words once, in the source language, and look them up:

    <p>{{ _("Thank you for your order, %(name)s!", name=contact.first_name) }}</p>
    {{ _("Still thinking") }}, {{ contact.first_name or _("friend") }}?
    {{ event.value | money }}          → 158,00 € for a contact with locale de, €158.00 for en
    {{ event.cart_value | number }}    → 1.234,5 / 1,234.5
    {{ event.occurred_at | date }}     → 21.11.2026 / Nov 21, 2026   (format: short|medium|long|full)

The translations are the project's `translations/<locale>.po` files (gettext PO, read with
Babel: `pybabel extract` / `init` / `update` with Babel's Jinja extractor make and keep them).
A contact's `locale` picks the catalog — `de_AT` reads `de_AT.po`, else `de.po` — and a
message without a translation (or a contact without a locale) shows the source text: a
missing translation is never an error. `%(name)s` placeholders are filled after translation,
so a translation may move them — but it must use the msgid's names: a translation that names one
the call does not pass fails that message (`render_error`, naming the catalog entry), and
`nurture validate` warns about it, as about a message a catalog lacks.

A message is in one language, its *message locale* (`Localizer.message_locale`): the contact's
`locale` if a catalog serves it (`de_AT` is served by `de_AT.po` or `de.po`; the source language,
English, needs none) or it is in the project's own language (policies.yaml `locale`: a project
whose templates are written in German, with no catalogs, has `locale: de` — and then every
message is German, an `en-GB` contact's too), else policies.yaml `locale`, else `en`. Its
words, `lang()`, dates, money and numbers all follow it — a `pt-BR` contact of a project without
`pt.po` reads English words, `lang="en"`, "March 8, 2026" and "€158.00", never Portuguese month
names in an English sentence; a `de-AT` contact of a project with `de.po` gets German words and
Austrian formats (`€ 158,00`). Money is in policies.yaml `currency` unless the filter names
another (`money("USD")`). `date` shows the day of a point in time where the recipient is: in
`contact.timezone`, else the library's `timezone` (policies.yaml `timezone`), else UTC; a naive
timestamp is UTC, a bare date is itself.

Nurture's own words — the recipient pages (nurture.web.pages) and the legal footer appended to a
template without one (nurture.rendering.legal_footer) — are in the message locale too, looked up
by `nurture_words`: the project's catalog first (a project may reword them or add a language),
then the built-in one shipped with Nurture (`nurture/rendering/translations/`: German).
"""
from __future__ import annotations

import contextlib
import decimal
import io
import math
import re

from datetime import date, datetime, timezone as dt_timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup


SOURCE_LANGUAGE = "en"  # the language of the msgids: the source text needs no catalog
_BUILT_IN = Path(__file__).parent / "translations"  # Nurture's own words (pages, legal footer)


def language_of(locale: Optional[str]) -> Optional[str]:
    """`de_AT` / `de-AT` → `de_AT` in Babel's form; None for no or an unusable locale."""
    if not locale or not isinstance(locale, str):
        return None
    return _parsed_locale(locale[:64])  # (a contact's value: no unbounded key in the cache)


@lru_cache(maxsize=1024)  # every `_()` of every message asks: Babel's parse is ~25 µs
def _parsed_locale(locale: str) -> Optional[str]:
    from babel import Locale, UnknownLocaleError
    try:
        return str(Locale.parse(locale.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


class Catalogs:
    """The project's translations/<locale>.po files, each read once (Babel's PO reader)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._catalogs: dict[str, Optional[dict[str, str]]] = {}
        self._lines: dict[str, dict[str, int]] = {}
        self._plurals: dict[str, _Plurals] = {}
        self._problems: dict[str, list[tuple[int, str]]] = {}  # locale → (line, what is wrong)

    def locales(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.po")) if self.folder.is_dir() else []

    def catalog(self, locale: str) -> Optional[dict[str, str]]:
        if locale not in self._catalogs:
            path = self.folder / f"{locale}.po"
            if path.is_file():
                problems = self._problems[locale] = []
                try:
                    self._catalogs[locale], self._lines[locale], self._plurals[locale] = _read(path, problems)
                except (UnicodeDecodeError, LookupError, ValueError, OSError) as exc:  # unreadable: the source text
                    problems.append((_line_of(path, exc), f"cannot be read ({exc}): {locale} gets the source text"))
                    self._catalogs[locale], self._lines[locale], self._plurals[locale] = None, {}, _Plurals()
            else:
                self._catalogs[locale], self._lines[locale], self._plurals[locale] = None, {}, _Plurals()
        return self._catalogs[locale]

    def serves(self, locale: str) -> bool:
        """Can a message be in `locale` (Babel's form): the source language, or a readable catalog
        for the locale or its language (`de_AT`: de_AT.po, else de.po)."""
        language = locale.split("_")[0]
        return language == SOURCE_LANGUAGE or any(self.catalog(c) is not None for c in dict.fromkeys((locale, language)))

    def lookup_plural(self, locale: Optional[str], singular: str, plural: str, n: Any) -> str:
        """The form for `n` of a plural entry (`msgid` / `msgid_plural` / `msgstr[i]`, the form
        chosen by the catalog's `Plural-Forms`: Polish has three) for `locale` (full locale, then
        its language); else two ordinary entries, one per form, as `lookup` finds them; else the
        source's own form (`singular` for n == 1)."""
        if locale:
            for candidate in (locale, locale.split("_")[0]):
                if self.catalog(candidate) is None:
                    continue
                form = self._plurals[candidate].form(singular, n)
                if form:
                    return form
        return self.lookup(locale, singular if n == 1 else plural)

    def translated(self, locale: str, message: str) -> bool:
        """Does `locale` translate `message` (an ordinary entry, or either id of a plural one)?"""
        if self.lookup(locale, message) != message:
            return True
        for candidate in (locale, locale.split("_")[0]):
            if self.catalog(candidate) is not None and self._plurals[candidate].covers(message):
                return True
        return False

    def source_of(self, locale: Optional[str], message: str) -> Optional[str]:
        """Where the translation `lookup` gives for `message` is written: `translations/de.po:12`."""
        if locale:
            for candidate in (locale, locale.split("_")[0]):
                found = self.catalog(candidate)
                if found and found.get(message):
                    return f"{self.folder.name}/{candidate}.po:{self._lines[candidate].get(message, 1)}"
        return None

    def read_problems(self) -> list[tuple[str, int, str]]:
        """(file, line, problem) of the catalogs that cannot be read — their locale gets the
        source text — and of the entries Babel skips in the others."""
        for locale in self.locales():
            self.catalog(locale)
        return [(f"{self.folder.name}/{locale}.po", line, problem)
                for locale in sorted(self._problems) for line, problem in self._problems[locale]]

    def placeholder_problems(self) -> list[tuple[str, int, str]]:
        """(file, line, problem) of every translation whose `%(name)s` placeholders differ from
        its msgid's: one the msgid lacks fails every message that uses it (the call does not
        pass that name), one it drops loses that value."""
        problems = []
        for locale in self.locales():
            for message, text in (self.catalog(locale) or {}).items():
                wanted, used = placeholders(message), placeholders(text)
                if wanted == used:
                    continue
                extra, dropped = sorted(used - wanted), sorted(wanted - used)
                parts = ([f"uses {', '.join(f'%({n})s' for n in extra)}, which its msgid does not have "
                          "(every message that uses it fails: render_error)"] if extra else []) + \
                        ([f"drops {', '.join(f'%({n})s' for n in dropped)}"] if dropped else [])
                problems.append((f"{self.folder.name}/{locale}.po", self._lines[locale].get(message, 1),
                                 f"the translation of \"{message}\" " + " and ".join(parts)))
        return problems

    def lookup(self, locale: Optional[str], message: str) -> str:
        """The translation of `message` for `locale` (full locale, then its language), or the
        message itself."""
        if locale:
            for candidate in (locale, locale.split("_")[0]):
                found = self.catalog(candidate)
                if found:
                    translated = found.get(message)
                    if translated:
                        return translated
        return message


class _Plurals:
    """A catalog's plural entries (what `pybabel extract` makes of an `ngettext` call): its
    singular msgid → the forms, and the rule that picks one for n (the catalog's `Plural-Forms`,
    compiled by the standard library's gettext.c2py, as gettext itself does)."""

    def __init__(self, forms: Optional[dict[str, tuple[str, ...]]] = None, plural_ids: Optional[set[str]] = None,
                 rule: Optional[Callable[[int], int]] = None):
        self.forms, self.plural_ids, self.rule = forms or {}, plural_ids or set(), rule

    def form(self, singular: str, n: Any) -> Optional[str]:
        forms = self.forms.get(singular)
        if not forms or self.rule is None:
            return None
        try:
            index = self.rule(int(n))
        except (TypeError, ValueError, OverflowError):
            return None
        return forms[index] if 0 <= index < len(forms) and forms[index] else None

    def covers(self, message: str) -> bool:
        return message in self.forms or message in self.plural_ids


def _read(path: Path, problems: list[tuple[int, str]]) -> tuple[dict[str, str], dict[str, int], _Plurals]:
    """(msgid → translation, msgid → line of its entry, the plural entries) of one PO file; a
    line Babel cannot parse is skipped (as Babel does) and named in `problems`, not printed."""
    import gettext as std_gettext

    from babel.messages.pofile import PoFileError, read_po
    data = path.read_bytes()
    try:
        catalog = read_po(io.BytesIO(data), abort_invalid=True)
    except PoFileError as exc:  # the first bad line named; the others are skipped quietly
        problems.append((exc.lineno + 1, f"{exc} (Babel skips the line)"))
        with contextlib.redirect_stdout(io.StringIO()):  # Babel prints a WARNING per skipped line
            catalog = read_po(io.BytesIO(data))
    entries = [m for m in catalog if isinstance(m.id, str) and m.id and isinstance(m.string, str)
               and m.string and not m.fuzzy]
    plural = [m for m in catalog if isinstance(m.id, (tuple, list)) and len(m.id) == 2 and m.id[0]
              and isinstance(m.string, (tuple, list)) and all(m.string) and not m.fuzzy]
    try:
        rule = std_gettext.c2py(catalog.plural_expr)
    except (ValueError, SyntaxError):  # a Plural-Forms header that is no C expression: no plural forms
        rule = None
    plurals = _Plurals({m.id[0]: tuple(m.string) for m in plural}, {m.id[1] for m in plural}, rule)
    lines = {m.id: m.lineno or 1 for m in entries}
    lines.update({m.id[0]: m.lineno or 1 for m in plural})
    return {m.id: m.string for m in entries}, lines, plurals


def _line_of(path: Path, exc: Exception) -> int:
    """The line of a PO file an error is about: the first line that does not decode, else 1."""
    if isinstance(exc, UnicodeDecodeError):
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                line.decode(exc.encoding)
            except (UnicodeDecodeError, LookupError):
                return number
    return 1


_PLACEHOLDER = re.compile(r"%(?:%|\(([^)]*)\))")


def placeholders(text: str) -> set[str]:
    """The names of a message's `%(name)s` placeholders."""
    return {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1) is not None}


def _babel_locale(locale: Optional[str]) -> str:
    return locale or SOURCE_LANGUAGE


@lru_cache(maxsize=1)
def built_in_catalogs() -> Catalogs:
    """The catalogs of Nurture's own words, shipped with it (read once per process)."""
    return Catalogs(_BUILT_IN)


def nurture_words(catalogs: Optional[Catalogs], locale: Optional[str]) -> Callable[..., str]:
    """`words(message, **values)`: one of Nurture's own messages (a recipient page's, the legal
    footer's) in `locale` — a message locale (`Localizer.message_locale`) — from the project's
    `catalogs`, else the built-in ones, else the source text; `%(name)s` values filled in. A
    translation whose placeholders do not fit is passed over for the next one: an unsubscribe
    page must never fail for a catalog's typo (`nurture validate` warns about it)."""
    layers = [c for c in (catalogs, built_in_catalogs()) if c is not None]

    def words(message: str, **values: Any) -> str:
        for layer in layers:
            found = layer.lookup(locale, message)
            if found == message:
                continue
            if not values:
                return found
            try:
                return found % values
            except (KeyError, ValueError, TypeError):  # this layer's typo: the next one's words
                continue
        return message % values if values else message

    return words


class Localizer:
    """The globals and filters one template library installs (nurture.rendering.templates)."""

    def __init__(self, catalogs: Catalogs, currency: str = "EUR", default_locale: Optional[str] = None,
                 timezone: Optional[str] = None):
        self.catalogs = catalogs
        self.currency = currency
        self.default_locale = language_of(default_locale)
        self.default_zone = _zone(timezone) or dt_timezone.utc
        self._message_locales: dict[Optional[str], str] = {}  # a contact's locale → its message locale
        self._without_catalogs: Optional[bool] = None

    def zone_of(self, context: Context) -> Any:
        """The recipient's time zone: the contact's, else the default (an unknown name: the default)."""
        contact = context.get("contact")
        own = contact.get("timezone") if isinstance(contact, dict) else None
        return _zone(own) or self.default_zone

    def message_locale(self, own: Any) -> str:
        """The one locale of a message to a contact whose `locale` is `own` — its words, `lang()`,
        dates, money and numbers: `own` if a catalog serves it or it is in the project's own
        language, else policies.yaml `locale`, else `en` (so words, `lang` and formats never are
        two languages)."""
        key = own[:64] if isinstance(own, str) else None
        found = self._message_locales.get(key)
        if found is None:  # every `_()` and filter asks: resolved once per distinct value
            own_locale = language_of(key)
            found = own_locale if own_locale and self._serves(own_locale) else (self.default_locale or SOURCE_LANGUAGE)
            if len(self._message_locales) < 1024:  # (a contact's value: no unbounded cache)
                self._message_locales[key] = found
        return found

    def _serves(self, locale: str) -> bool:
        """A catalog serves `locale`, or it is the project's own language (policies.yaml `locale`:
        the language its templates are written in when it has no catalogs at all — then that
        language is the source text's, and English is no more served than any other)."""
        project = self.default_locale.split("_")[0] if self.default_locale else None
        if locale.split("_")[0] == project:
            return True
        if project not in (None, SOURCE_LANGUAGE) and self._no_catalogs():
            return False
        return self.catalogs.serves(locale)

    def _no_catalogs(self) -> bool:
        if self._without_catalogs is None:
            self._without_catalogs = not self.catalogs.locales()
        return self._without_catalogs

    def locale_of(self, context: Context) -> str:
        contact = context.get("contact")
        return self.message_locale(contact.get("locale") if isinstance(contact, dict) else None)

    def install(self, env: Any, text_of: Optional[Callable[[str], str]] = None) -> None:
        """`text_of`: for the plain-text part derived from an e-mail's HTML — turns a message
        (source or translation) that holds markup into text before its values are filled in."""
        localizer = self

        @pass_context
        def gettext(context: Context, message: str, **values: Any) -> str:
            locale = localizer.locale_of(context)
            return fill(context, locale, str(message), localizer.catalogs.lookup(locale, str(message)), values)

        def fill(context: Context, locale: Optional[str], message: str, text: str, values: dict) -> str:
            if text_of is not None and "<" in text:
                text = text_of(text)
            if values:
                try:
                    if context.eval_ctx.autoescape:  # values are escaped, the catalog's markup is not
                        return Markup(text) % {k: v for k, v in values.items()}
                    return text % values
                except (KeyError, ValueError, TypeError) as exc:  # a RenderError, never a KeyError
                    raise ValueError(_fill_problem(str(message), text, exc, values,
                                                   localizer.catalogs.source_of(locale, str(message)))) from None
            return Markup(text) if context.eval_ctx.autoescape else text

        @pass_context
        def ngettext(context: Context, singular: str, plural: str, n: int, **values: Any) -> str:
            locale = localizer.locale_of(context)
            text = localizer.catalogs.lookup_plural(locale, str(singular), str(plural), n)
            return fill(context, locale, str(singular if n == 1 else plural), text, {"n": n, **values})

        @pass_context
        def money(context: Context, value: Any, currency: Optional[str] = None) -> str:
            from babel.numbers import format_currency
            if value is None or value == "":
                return ""
            number = _number(value)
            with _digits_enough():
                return format_currency(number, currency or localizer.currency,
                                       locale=_babel_locale(localizer.locale_of(context)))

        @pass_context
        def number(context: Context, value: Any, digits: Optional[int] = None) -> str:
            from babel.numbers import format_decimal
            if value is None or value == "":
                return ""
            pattern = None if digits is None else "#,##0" + ("." + "0" * digits if digits else "")
            number = _number(value)
            with _digits_enough():
                return format_decimal(number, format=pattern, locale=_babel_locale(localizer.locale_of(context)))

        @pass_context
        def date_filter(context: Context, value: Any, format: str = "medium") -> str:
            from babel.dates import format_date
            if value is None or value == "":
                return ""
            return format_date(_date(value, localizer.zone_of(context)), format=format,
                               locale=_babel_locale(localizer.locale_of(context)))

        @pass_context
        def lang(context: Context) -> str:
            """The message's language as an HTML `lang` value (`de-AT`): its message locale, the
            one `_()` and the filters use."""
            return localizer.locale_of(context).replace("_", "-")

        env.globals.update({"_": gettext, "gettext": gettext, "ngettext": ngettext, "lang": lang})
        env.filters.update({"money": money, "number": number, "date": date_filter})


def _fill_problem(message: str, text: str, exc: Exception, values: dict, source: Optional[str]) -> str:
    """Why `text` (the translation of `message` written at `source`, or the message itself)
    cannot be filled with `values`."""
    what = f"the translation of \"{message}\" in {source}" if source and text != message else f"_(\"{message}\")"
    if isinstance(exc, KeyError):
        passed = ", ".join(sorted(values)) or "nothing"
        return f"{what} uses %({exc.args[0]})s, which the call does not pass (it passes: {passed})"
    return f"{what} cannot be filled in: {exc}"


# Babel rounds in the current decimal context: at its default 28 digits, 1e26 with two
# decimals raised decimal.InvalidOperation (a bare class name as the render error). Every float
# has fewer than 310 digits before its point; a whole number with more is refused (_number).
_FORMAT_DIGITS = 400


def _digits_enough() -> Any:
    return decimal.localcontext(prec=_FORMAT_DIGITS + 20)


def _number(value: Any) -> Any:
    """A finite number to format; ValueError for anything else (NaN and Infinity too: "nan €";
    a whole number of more than 400 digits)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = float(str(value))
        except ValueError:
            raise ValueError(f"'{value}' is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"'{value}' is not a finite number")
    if isinstance(number, int) and abs(number) >= 10 ** _FORMAT_DIGITS:
        raise ValueError(f"a whole number of more than {_FORMAT_DIGITS} digits is too large to show")
    return number


def _date(value: Any, zone: Any = dt_timezone.utc) -> date:
    """The calendar day of `value` in `zone`: a point in time (aware, or naive = UTC) is
    converted; a date is itself."""
    if not isinstance(value, (date, datetime)):
        text = str(value)
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text or " " in text.strip() \
                else date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"'{value}' is not a date") from None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt_timezone.utc)
        return aware.astimezone(zone).date()
    return value


@lru_cache(maxsize=512)
def _zone(name: Any) -> Optional[Any]:
    """ZoneInfo of an IANA name; None for none or an unknown one (a contact's value, never an error)."""
    if not name or not isinstance(name, str):
        return None
    from zoneinfo import ZoneInfo
    try:
        return ZoneInfo(name[:64])
    except (ValueError, OSError, LookupError):  # ZoneInfoNotFoundError is a KeyError
        return None
