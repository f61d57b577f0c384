"""Test-run wiring shared by every module: which tests must run in the same pytest-xdist worker.

`make test` runs the suite in parallel workers (pytest-xdist, `--dist loadgroup`). A module-scoped fixture is set up
once per worker that runs a test needing it; the real studies behind some (a Snakemake study run end to end, minutes
each) must be set up once. So the tests of a module that share such fixtures, directly or through one another (one
test uses a and b, another b and c), form one group and run in one worker, one after the other; every other test
goes wherever a worker is free.

pytest-xdist's own loadgroup cannot carry these groups under pytest 9.2: it renames a test's node id to
`<id>@<group>` through `item._nodeid`, which pytest 9.2 no longer reads (node ids are `item._id`), so every test
was scheduled alone and each study was set up in both workers. Here each worker writes the groups it found to a file
of the test run, and the scheduler (xdist's hook pytest_xdist_make_scheduler) reads them.
"""
import json
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

SHARED_SCOPES = ("session", "package", "module")


def _builtin(definition):
    """pytest's and plugins' own fixtures (tmp_path_factory, ...): cheap, and shared by nearly every test."""
    return getattr(definition.func, "__module__", "").split(".")[0] in ("_pytest", "pytest", "xdist")


def _shared_fixtures(item):
    definitions = item._fixtureinfo.name2fixturedefs
    return {name for name in item.fixturenames if any(
        definition.scope in SHARED_SCOPES and not _builtin(definition) for definition in definitions.get(name, ()))}


def fixture_groups(items):
    """node id -> group for each test that uses module- or session-scoped fixtures of its own module or conftest."""
    by_module = defaultdict(list)
    for item in items:
        shared = _shared_fixtures(item)
        if shared:
            by_module[item.module.__name__].append((item, shared))
    groups = {}
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
            groups[item.nodeid] = f"{module}:{'+'.join(sorted(component))}"
    return groups


def _groups_files(run_id):
    return Path(tempfile.gettempdir()).glob(f"leanmed-test-groups-{run_id}-*.json")


def pytest_configure(config):
    # The run's id, which the workers get, is made here when not given, so that the scheduler knows it too.
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") == "loadgroup":
        if config.getoption("testrunuid", None) is None:
            config.option.testrunuid = uuid.uuid4().hex


def pytest_collection_modifyitems(config, items):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or not config.getoption("loadgroup", False):  # a worker's option: its run is loadgroup
        return
    path = Path(tempfile.gettempdir()) / f"leanmed-test-groups-{workerinput['testrunuid']}-{workerinput['workerid']}.json"
    path.write_text(json.dumps(fixture_groups(items)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    run_id = config.getoption("testrunuid")

    class SharedFixtureScheduling(LoadScopeScheduling):
        """xdist's load scheduling, but the tests of one group (fixture_groups) go to one worker."""

        groups = None

        def _split_scope(self, nodeid):
            if self.groups is None:  # asked once every worker has collected, so every file is written
                self.groups = {}
                for path in _groups_files(run_id):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid, nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput") and session.config.getoption("dist", "no") == "loadgroup":
        for path in _groups_files(session.config.getoption("testrunuid")):
            path.unlink(missing_ok=True)
