from sqlalchemy import text


async def test_database_is_migrated(db):
    async with db.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == "0001"
