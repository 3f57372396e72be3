"""Test helpers shipped with the package: tiny raw-layout replicas of the datasets."""

from .fixtures import DatasetFixture, write_enrico_fixture, write_mmhs150k_fixture, write_mmimdb_fixture

__all__ = ["DatasetFixture", "write_mmimdb_fixture", "write_enrico_fixture", "write_mmhs150k_fixture"]
