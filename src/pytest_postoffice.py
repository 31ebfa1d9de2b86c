"""The pytest plugin of postoffice (entry point ``pytest11``): the ``postoffice_server`` fixture.

Each test that asks for the fixture gets a fresh capture server
(:class:`postoffice.testing.server.CaptureServer`), in its own temporary directory, stopped
when the test ends::

    def test_signup_sends_a_confirmation(postoffice_server):
        app = make_app(smtp_host=postoffice_server.smtp_host, smtp_port=postoffice_server.smtp_port)
        app.sign_up("alice@example.com")
        mail = postoffice_server.wait(to="alice@example.com", subject="Confirm")
        (link,) = [l for l in postoffice_server.links(mail) if "/confirm" in l["url"]]
        assert app.get(link["url"]).status_code == 200

A top-level module, and ``postoffice`` is imported only when a test asks for the fixture:
pytest loads entry-point plugins before it applies ``pythonpath``, and importing the package
here would pin whichever copy is installed, even in a checkout of postoffice testing its own
sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from postoffice.testing.server import CaptureServer


@pytest.fixture
def postoffice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaptureServer]:
    """A running capture server: ``.smtp_host``, ``.smtp_port``, ``.api_url``, ``.wait()``,
    ``.messages()``, ``.links()``, ``.codes()``, ``.clear()``, ``.chaos()``."""
    from postoffice.testing.server import CaptureServer

    with CaptureServer(tmp_path_factory.mktemp("postoffice")) as server:
        yield server
