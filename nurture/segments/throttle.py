"""The per-provider throttle hook: every provider request takes a slot first.

Integrations call `take_slot(provider)` before each HTTP request. By default nothing is
installed and it returns at once; the `segment-sync` flow installs a hook that takes a slot
of the Prefect global concurrency limit `nurture-<provider>` (`rate_limit`), so all workers
together stay under each provider's rate. The engine never imports Prefect: it only knows
this callable.
"""
from __future__ import annotations

from typing import Callable, Optional

Hook = Callable[[str], None]
_hook: Optional[Hook] = None


def install(hook: Optional[Hook]) -> Optional[Hook]:
    """Install `hook` (None removes it); returns the previous one so callers can restore it."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def take_slot(provider: str) -> None:
    if _hook is not None:
        _hook(provider)


def limit_name(provider: str) -> str:
    """The name of the global concurrency limit of a provider, e.g. `nurture-meta`."""
    return f"nurture-{provider}"
