"""Fixtures for tests against a real MariaDB holding an ISPyB schema, as a facility's ISPyB runs.

The server is 127.0.0.1:3306, root without a password (`CRYOEM_TEST_MARIADB_ADMIN_URL` points elsewhere);
when nothing listens there a private server is started for the run (devtools.local_mariadb). The ISPyB
schema is created from the `ispyb` package's SQLAlchemy models (their create_all gives every table, type
and foreign key of ispyb-database), in a fresh database dropped after the run.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from airflow_provider_cryoem.devtools.local_mariadb import MARIADB_ADMIN_URL, mariadb_server


@pytest.fixture(scope="session")
def mariadb_admin_url() -> Iterator[str]:
    with mariadb_server(MARIADB_ADMIN_URL) as url:
        yield url


@pytest.fixture(scope="session")
def ispyb_url(mariadb_admin_url: str) -> Iterator[str]:
    """A fresh database with ISPyB's tables, shared by the run (each test makes its own data collection)."""
    from ispyb.sqlalchemy import Base

    name = f"cryoem_ispyb_{uuid.uuid4().hex[:10]}"
    admin = create_engine(mariadb_admin_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    url = make_url(mariadb_admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def register_data_collection(ispyb_url: str, image_directory: str) -> int:
    """What the microscope software writes before processing starts: a person, a proposal, a visit, a data
    collection group and the data collection whose imageDirectory is the folder movies arrive in."""
    from ispyb.sqlalchemy import BLSession, DataCollection, DataCollectionGroup, Person, Proposal
    from sqlalchemy.orm import Session

    engine = create_engine(ispyb_url)
    with Session(engine) as db, db.begin():
        person = Person(login=f"u{uuid.uuid4().hex[:8]}", familyName="Tester")
        db.add(person)
        db.flush()
        proposal = Proposal(personId=person.personId, proposalCode="bi", proposalNumber=str(uuid.uuid4().int % 10**5),
                            title="cryo-EM test")
        db.add(proposal)
        db.flush()
        visit = BLSession(proposalId=proposal.proposalId, visit_number=1, beamLineName="m02",
                          startDate=datetime(2026, 12, 3, 9), endDate=datetime(2026, 12, 3, 21))
        db.add(visit)
        db.flush()
        group = DataCollectionGroup(sessionId=visit.sessionId, experimentType="EM", comments="EPU")
        db.add(group)
        db.flush()
        collection = DataCollection(dataCollectionGroupId=group.dataCollectionGroupId, SESSIONID=visit.sessionId,
                                    imageDirectory=image_directory.rstrip("/") + "/", fileTemplate="*.tiff",
                                    imageSuffix="tiff", startTime=datetime(2026, 12, 3, 9, 5), voltage=300,
                                    pixelSizeOnImage=1.0, nominalMagnification=130000)
        db.add(collection)
        db.flush()
        collection_id = collection.dataCollectionId
    engine.dispose()
    return collection_id
