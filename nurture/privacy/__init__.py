"""Privacy: a person's right to erasure (GDPR Art. 17) and to a copy of their data (Art. 15/20).

- `erase` — pseudonymize everything held about a contact, remove it from every audience and CRM
  list at once (through the segment sync's removal path), delete it from CRMs that offer a
  GDPR delete, and record the erasure (`erasure` table) with counts, never the data;
- `tombstones` — the hashed tombstone (SHA-256 of the normalized e-mail) and the one check the
  ingest calls so that an erased person is never silently re-created;
- `export` — one JSON document with everything held about a contact;
- `files` — the personal data Nurture keeps in files under the data directory (the file
  outbox, the handover file);
- `crm` — how a CRM integration offers a GDPR delete (`erase_person`), found through the registry.

This package's `__init__` imports nothing: `nurture.ingest` imports `tombstones`, and the
erasure imports the ingest's e-mail normalization, so the package must stay cycle-free.
"""
