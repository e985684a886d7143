"""Alembic environment: runs on the connection Nurture hands it (see store.db.migrate)."""
from alembic import context
from sqlmodel import SQLModel

import nurture.store.tables  # noqa: F401  (imports every model: registers the tables on SQLModel.metadata)
import nurture.privacy.models  # noqa: F401  (erasure)

target_metadata = SQLModel.metadata
config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` CLI for authoring migrations: -x url=sqlite:///...
    from sqlalchemy import create_engine
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///./.alembic-author.db")
    with create_engine(url).connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()
else:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
