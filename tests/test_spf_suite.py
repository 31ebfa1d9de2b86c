"""The SPF project's RFC 7208 (and RFC 4408) test suites against :func:`check_mail_from`.

The suites (rfc7208-tests.yml, openspf.org release 2014.04, and rfc4408-tests.yml) are read
from where they are published: pyspf's source distribution on PyPI carries them under test/.
It is downloaded once with pip into ~/.cache/postoffice-test-vectors (or
$POSTOFFICE_TEST_VECTORS) and never copied into this repository. Every case of every scenario runs, by its id; each scenario's zone data is served by
a real DNS server on loopback (tests/dns_zone.py) and looked up by dnspython, as in production.

The zone data follows the suite's driver conventions (pyspf test/testspf.py, the Mail::SPF
suite): a record of the obsolete SPF type is also published as TXT unless the name lists TXT
records of its own ("TXT: NONE" lists none); TIMEOUT makes the name's other queries go
unanswered; the driver's default explanation is "DEFAULT".
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dns_zone import DnsZone, ZoneServer, dns_zone_server
from postoffice.mailauth.spf import SpfOptions, check_mail_from

PYSPF = "pyspf==2.0.14"
SDIST = "pyspf-2.0.14.tar.gz"
# The RFC 4408 suite passes too: its file, as pyspf ships it, accepts RFC 7208's answers.
SUITES = {
    "rfc7208": "pyspf-2.0.14/test/rfc7208-tests.yml",
    "rfc4408": "pyspf-2.0.14/test/rfc4408-tests.yml",
}
OPTIONS = SpfOptions(receiver="receiver.test", default_explanation="DEFAULT")

# Cases this implementation answers otherwise than published, each with the reason and the
# result it gives instead (asserted, so the case still shows a bounded, orderly end).
NOT_AS_PUBLISHED: dict[str, tuple[str, str]] = {
    "rfc7208/null-text": (
        "temperror",
        "the zone has a TXT record with no strings, which RFC 1035 §3.3.14 does not allow: "
        "dnspython rejects the whole DNS message, so the TXT lookup fails rather than "
        "finding the other (valid) record",
    ),
}


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "postoffice-test-vectors"
    return Path(os.environ.get("POSTOFFICE_TEST_VECTORS", default))


@functools.cache
def load_suites() -> dict[str, list[dict[str, Any]]]:
    """Each suite's scenarios; downloads pyspf's sdist the first time (pip, from PyPI)."""
    cache = _cache_dir() / "pyspf"
    sdist = cache / SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, PYSPF, "-d", str(cache)], check=True, capture_output=True, timeout=300)
    suites = {}
    with tarfile.open(sdist) as archive:
        for name, member in SUITES.items():
            stream = archive.extractfile(member)
            assert stream is not None, f"{member} is not a file in {SDIST}"
            suites[name] = list(yaml.safe_load_all(stream))
    return suites


def _cases() -> list[tuple[str, str]]:
    """(case id, scenario description) for every case, e.g. ("rfc7208/mx-limit", ...)."""
    cases = []
    for suite, scenarios in load_suites().items():
        for scenario in scenarios:
            cases += [(f"{suite}/{test}", scenario["description"]) for test in scenario["tests"]]
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The case ids are needed to collect the tests, so the (cached) download happens here."""
    if "case_id" not in metafunc.fixturenames:
        return
    try:
        ids = [case for case, _ in _cases()]
    except (OSError, subprocess.SubprocessError, tarfile.TarError, yaml.YAMLError) as exc:
        metafunc.parametrize("case_id", [pytest.param(f"unavailable: {exc}", id="suite-unavailable")])
        return
    assert len(ids) == len(set(ids)), "case ids must be unique"
    metafunc.parametrize("case_id", ids)


@pytest.fixture(scope="session")
def spf_suites() -> dict[str, list[dict[str, Any]]]:
    try:
        return load_suites()
    except (OSError, subprocess.SubprocessError, tarfile.TarError, yaml.YAMLError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the SPF test suite is required in CI: {exc}")
        pytest.skip(f"the SPF test suite could not be downloaded: {exc}")


def suite_zone(zonedata: dict[str, list[Any]]) -> DnsZone:
    """The scenario's zone, by the suite's conventions (see the module docstring)."""
    zone = DnsZone()
    for name, entries in zonedata.items():
        zone.exists(name)
        own_txt = any(isinstance(entry, dict) and "TXT" in entry for entry in entries)
        for entry in entries:
            if entry == "TIMEOUT":
                zone.timeout(name)
                continue
            ((rtype, value),) = entry.items()
            _publish(zone, name, rtype, value, txt_too=not own_txt)
    return zone


def _publish(zone: DnsZone, name: str, rtype: str, value: Any, *, txt_too: bool) -> None:
    if rtype in ("TXT", "SPF"):
        if value == "NONE":
            return
        strings = [value] if isinstance(value, str) else list(value)
        if rtype == "SPF":
            zone.spf(name, *strings)
        if rtype == "TXT" or txt_too:
            zone.txt(name, *strings)
    elif rtype in ("A", "AAAA"):
        zone.a(name, value)
    elif rtype == "MX":
        zone.mx(name, value[0], value[1])
    elif rtype == "PTR":
        zone.ptr(name, value)
    elif rtype == "CNAME":
        zone.cname(name, value)
    elif rtype == "RCODE":
        zone.rcode(name, value)
    else:
        raise AssertionError(f"zone data type {rtype} is not supported by the driver")


def _find(suites: dict[str, list[dict[str, Any]]], case_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    suite, _, test = case_id.partition("/")
    for scenario in suites[suite]:
        if test in scenario["tests"]:
            return scenario, scenario["tests"][test]
    raise AssertionError(f"no case {case_id}")


@pytest.fixture(scope="module")
def zone_server() -> Iterator[ZoneServer]:
    with dns_zone_server() as server:
        yield server


async def test_published_case(
    case_id: str, spf_suites: dict[str, list[dict[str, Any]]], zone_server: ZoneServer
) -> None:
    scenario, case = _find(spf_suites, case_id)
    zone_server.serve(suite_zone(scenario["zonedata"]))
    resolver = zone_server.resolver(1.5)
    result = await check_mail_from(
        case["host"], case["mailfrom"], case["helo"], resolver=resolver, options=OPTIONS
    )
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    if case_id in NOT_AS_PUBLISHED:
        expected = [NOT_AS_PUBLISHED[case_id][0]]
    assert result.result in expected, f"{case.get('description', '')} ({case['spec']}): {result}"
    if "explanation" in case:
        assert result.explanation == case["explanation"]


def test_every_case_runs_and_every_exception_is_explained(
    spf_suites: dict[str, list[dict[str, Any]]],
) -> None:
    ids = {case for case, _ in _cases()}
    assert len(ids) > 150  # the whole suite was read, not a fragment
    assert set(NOT_AS_PUBLISHED) <= ids
