from __future__ import annotations

import pytest

from tests.infra import provider_schema, tfconfig
from tests.infra.wheelhouse import WHEELHOUSE

PROJECT = "aiprod-offline-test"


def pytest_collection_finish(session: pytest.Session) -> None:
    """test_package's clean install needs the archive's wheels: start downloading them
    now, so the download overlaps the tests that run before it."""
    if any("installed" in getattr(item, "fixturenames", ()) for item in session.items):
        WHEELHOUSE.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    WHEELHOUSE.remove()


@pytest.fixture(scope="session")
def tf_config() -> tfconfig.Config:
    return tfconfig.load_config()


@pytest.fixture(scope="session")
def evaluated(tf_config: tfconfig.Config,
              tmp_path_factory: pytest.TempPathFactory) -> tfconfig.Evaluated:
    return tfconfig.evaluate_locals(tf_config, tmp_path_factory.mktemp("tf-eval"),
                                    {"project_id": PROJECT})


@pytest.fixture(scope="session")
def deployment(tf_config: tfconfig.Config, evaluated: tfconfig.Evaluated) -> tfconfig.Deployment:
    return tfconfig.Deployment(tf_config, evaluated)


@pytest.fixture(scope="session")
def google_schema() -> provider_schema.ProviderSchema:
    return provider_schema.load()


@pytest.fixture(scope="session")
def provider_schemas() -> dict[str, provider_schema.ProviderSchema]:
    """Every provider versions.tf requires, by its local name (google, google-beta, time)."""
    return {name: provider_schema.load(source) for name, source in provider_schema.SOURCES.items()}
