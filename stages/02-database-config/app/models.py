from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app import db

MAX_NAME_LENGTH = 100


class Name(db.Model):
    __tablename__ = 'names'

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))

    def __repr__(self):
        return f'<Name {self.name!r}>'
