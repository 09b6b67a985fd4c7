"""Revision scripts (a package only so a non-editable wheel ships them; Alembic reads the files itself)."""
