from alembic.script import ScriptDirectory
from sqlalchemy import text

from ops.migrate import alembic_config


async def test_database_is_migrated_to_head(db, settings):
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    async with db.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == head
