"""Test helpers shipped with the package: tiny raw-layout replicas of the datasets, and a tolerant comparison
of nested results."""

from .compare import assert_same_values
from .fixtures import DatasetFixture, write_enrico_fixture, write_mmhs150k_fixture, write_mmimdb_fixture

__all__ = ["assert_same_values", "DatasetFixture", "write_mmimdb_fixture", "write_enrico_fixture", "write_mmhs150k_fixture"]
