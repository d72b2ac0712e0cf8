"""The PostgreSQL fallback for real: nothing listens at the admin URL, so a private cluster runs the tests."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from airflow_provider_cryoem.devtools.local_airflow import free_port, fresh_postgres_database
from airflow_provider_cryoem.devtools.local_postgres import listening, postgres_server


def test_an_unreachable_server_is_replaced_by_a_private_cluster_that_is_gone_after():
    unreachable = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/postgres"
    with postgres_server(unreachable) as admin_url:
        assert admin_url != unreachable and listening(admin_url)
        with fresh_postgres_database("cryoem_fallback", admin_url) as url:
            engine = create_engine(url)
            with engine.begin() as connection:
                connection.execute(text("CREATE TABLE movie (name text)"))
                connection.execute(text("INSERT INTO movie VALUES ('a.tiff'), ('b.tiff')"))
                assert connection.execute(text("SELECT count(*) FROM movie")).scalar_one() == 2
                data_dir = Path(connection.execute(text("SHOW data_directory")).scalar_one())
            engine.dispose()
        assert data_dir.is_dir()
    assert not listening(admin_url)
    assert not data_dir.parent.exists()  # the cluster's temporary directory, socket and log included
