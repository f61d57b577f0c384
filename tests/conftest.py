"""Test-run wiring shared by every module: which tests must run in the same pytest-xdist worker.

`make test` runs the suite in parallel workers (pytest-xdist, --dist loadgroup). A module-scoped fixture is set up
once per worker that runs a test needing it; the real studies behind some (a Snakemake study run end to end, minutes
each) must be set up once. So the tests of a module that share such fixtures, directly or through one another (one
test uses a and b, another b and c), get one group and run in one worker, one after the other; every other test goes
wherever a worker is free.
"""
from collections import defaultdict

import pytest

SHARED_SCOPES = ("session", "package", "module")


def _builtin(definition):
    """pytest's and plugins' own fixtures (tmp_path_factory, ...): cheap, and shared by nearly every test."""
    return getattr(definition.func, "__module__", "").split(".")[0] in ("_pytest", "pytest", "xdist")


def _shared_fixtures(item):
    definitions = item._fixtureinfo.name2fixturedefs
    return {name for name in item.fixturenames if any(
        definition.scope in SHARED_SCOPES and not _builtin(definition) for definition in definitions.get(name, ()))}


def pytest_collection_modifyitems(config, items):
    by_module = defaultdict(list)
    for item in items:
        shared = _shared_fixtures(item)
        if shared:
            by_module[item.module.__name__].append((item, shared))
    for module, tests in by_module.items():
        components = []  # sets of fixture names that some test uses together
        for _, shared in tests:
            joined = set(shared)
            for component in [component for component in components if component & joined]:
                joined |= component
                components.remove(component)
            components.append(joined)
        for item, shared in tests:
            component = next(component for component in components if shared <= component)
            item.add_marker(pytest.mark.xdist_group(f"{module}:{'+'.join(sorted(component))}"))
