"""How report figures are written — the same in the terminal, the HTML page and the Prefect
artifact: money with two decimals and a thousands separator, counts as integers, rates and
signed percentage points with one decimal, ROI as a multiple; never "-0.0", and "n/a" for a
figure that does not exist (a goal without a value, a rate of nothing).

Numbers follow the project's `policies.yaml` `locale` and `currency` (`locale: de` →
`1.234,56 €`, `12,5 %`), through Babel's CLDR data; without a locale they are written as
`1,234.56 €`. A view sets the style once for what it renders (`number_style(policies)`); the
functions below read it, so a figure looks the same wherever it appears."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Optional

NA = "n/a"


@dataclass(frozen=True)
class NumberStyle:
    currency: str = "EUR"  # ISO 4217
    locale: Optional[str] = None  # a CLDR locale (de, de_DE, en_GB …); None: 1,234.56 €

    @property
    def symbol(self) -> str:
        return _symbol(self.currency, self.locale or "en")


_STYLE: ContextVar[NumberStyle] = ContextVar("nurture_number_style", default=NumberStyle())


@lru_cache(maxsize=64)
def _symbol(currency: str, locale: str) -> str:
    from babel.numbers import get_currency_symbol
    return get_currency_symbol(currency, locale.replace("-", "_"))


@lru_cache(maxsize=64)
def _locale(name: str) -> Any:
    from babel import Locale
    return Locale.parse(name.replace("-", "_"))


def current_style() -> NumberStyle:
    return _STYLE.get()


@contextmanager
def number_style(policies: Any = None, *, currency: Optional[str] = None, locale: Optional[str] = None
                 ) -> Iterator[NumberStyle]:
    """Write figures in the project's locale and currency (its `policies`) while rendering."""
    style = NumberStyle(currency or getattr(policies, "currency", None) or "EUR",
                        locale if locale is not None else getattr(policies, "locale", None))
    token = _STYLE.set(style)
    try:
        yield style
    finally:
        _STYLE.reset(token)


def _clean(value: float, decimals: int) -> float:
    """Round for display and turn -0.0 (a tiny negative rounded away) into 0.0."""
    rounded = round(value, decimals)
    return 0.0 if rounded == 0 else rounded


def _decimal(value: float, pattern: str) -> str:
    """`value` with the grouping and decimal marks of the current locale."""
    style = _STYLE.get()
    if style.locale is None:
        decimals = len(pattern.partition(".")[2])
        return f"{value:,.{decimals}f}"
    from babel.numbers import format_decimal
    return format_decimal(value, pattern, locale=_locale(style.locale))


def money(value: Optional[float]) -> str:
    """An amount in the project's currency."""
    if value is None:
        return NA
    style = _STYLE.get()
    amount = _clean(value, 2)
    if style.locale is None:
        return f"{amount:,.2f} {style.symbol}"
    from babel.numbers import format_currency
    return format_currency(amount, style.currency, locale=_locale(style.locale))


def count(value: Optional[float]) -> str:
    """An integer as an integer (1,234), a fractional count (credited conversions) with one decimal."""
    if value is None:
        return NA
    rounded = _clean(float(value), 1)
    if rounded.is_integer():
        return _decimal(int(rounded), "#,##0")
    return _decimal(rounded, "#,##0.0")


def pct(value: Optional[float]) -> str:
    if value is None:
        return NA
    v = _clean(value * 100, 1)
    style = _STYLE.get()
    if style.locale is None:
        return f"{v:.1f}%"
    from babel.numbers import format_percent
    locale = _locale(style.locale)
    pattern = locale.percent_formats[None].pattern.replace("0%", "0.0%").replace("0\xa0%", "0.0\xa0%")
    return format_percent(v / 100, pattern, locale=locale)


def signed_points(value: Optional[float]) -> str:
    if value is None:
        return NA
    v = _clean(value * 100, 1)
    if v == 0:
        return f"{_decimal(0.0, '0.0')} pts"
    return f"{'+' if v > 0 else '−' if _STYLE.get().locale else '-'}{_decimal(abs(v), '#,##0.0')} pts"


def multiple(value: Optional[float]) -> str:
    """An ROI: (revenue − cost) / cost as a multiple of the cost."""
    if value is None:
        return NA
    v = _clean(value, 1)
    sign = "-" if v < 0 and _STYLE.get().locale is None else "−" if v < 0 else ""
    return f"{sign}{_decimal(abs(v), '#,##0.0')}×"


def interval(low: Optional[float], high: Optional[float], fmt=money) -> str:
    """"95% CI low … high", or "" without an interval."""
    if low is None or high is None:
        return ""
    return f"95% CI {fmt(low)} … {fmt(high)}"


def price(value: Optional[float]) -> str:
    """A unit price: at least two decimals, more where a fraction of a cent matters (0.001 €)."""
    if value is None:
        return NA
    style = _STYLE.get()
    amount = _clean(value, 6)
    if style.locale is None:
        text = f"{amount:,.6f}".rstrip("0")
        whole, _, frac = text.partition(".")
        return f"{whole}.{frac.ljust(2, '0')} {style.symbol}"
    from babel.numbers import format_currency
    locale = _locale(style.locale)
    pattern = locale.currency_formats["standard"].pattern.replace("0.00", "0.00####")
    return format_currency(amount, style.currency, pattern, locale=locale, currency_digits=False)
