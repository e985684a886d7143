"""The store: SQLModel tables, engine creation and schema migrations."""
from nurture.store.db import Store, open_store
from nurture.store.models import (Consent, Contact, Enrollment, Event, JourneyCursor,
                                  JourneyVersion, Message, Suppression)

__all__ = ["Store", "open_store", "Consent", "Contact", "Enrollment", "Event", "JourneyCursor",
           "JourneyVersion", "Message", "Suppression"]
