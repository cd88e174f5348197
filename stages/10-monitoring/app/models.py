from datetime import datetime

from sqlalchemy import DateTime, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app import db

MAX_NAME_LENGTH = 100


class Name(db.Model):
    __tablename__ = 'names'

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    # Set by PostgreSQL when the row is inserted, so rows added by any client have it.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    def __repr__(self):
        return f'<Name {self.name!r}>'
