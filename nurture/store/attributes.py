"""Which attribute names contacts have: for `nurture validate`, which warns about a template
reading `contact.X` when no contact has an attribute X. Read from a sample of contacts (the
first `sample` by id), in SQL: the keys of the JSON column, never the values."""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import text


def attribute_names(store: Any, sample: int = 20_000) -> Optional[set[str]]:
    """The attribute keys of up to `sample` contacts; None when there is no contact yet."""
    with store.reading() as conn:
        if conn.execute(text("SELECT 1 FROM contact LIMIT 1")).first() is None:
            return None
        if conn.dialect.name == "postgresql":
            sql = ("SELECT DISTINCT jsonb_object_keys(c.attributes::jsonb) FROM "
                   "(SELECT attributes FROM contact WHERE attributes IS NOT NULL ORDER BY id LIMIT :n) c "
                   "WHERE jsonb_typeof(c.attributes::jsonb) = 'object'")
        else:
            sql = ("SELECT DISTINCT j.key FROM (SELECT attributes FROM contact WHERE json_valid(attributes) "
                   "ORDER BY id LIMIT :n) c, json_each(c.attributes) j")
        return {row[0] for row in conn.execute(text(sql), {"n": sample})}
