"""Authentication results in the web side: which Authentication-Results field counts (only the
server's own), what is kept of it, the verdict ``auth:`` searches, and the whole path over real
sockets: messages carrying the field the SMTP side adds arrive over SMTP, are indexed, and show
in the JSON API and its searches."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from conftest import RunningServer
from postoffice.mailauth import results
from postoffice.mailauth.results import MethodResult, Property
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict
from postoffice.web import authresults, message
from postoffice.web.authresults import Authentication, Check
from web_helpers import client, make_message, messages, send, send_with_fields

pytestmark = pytest.mark.timeout(30)

# make_config's hostname: the authserv-id of the server's own field.
HOST = "mx.test"


def field(authserv_id: str, *found: MethodResult) -> bytes:
    """A whole Authentication-Results field as the SMTP side writes it."""
    return results.header_field(authserv_id, found)


def value(authserv_id: str, *found: MethodResult) -> str:
    return results.build(authserv_id, found)


def spf(result: str, domain: str = "b.example") -> MethodResult:
    return results.spf_result(SpfVerdict(result, domain))


def dkim(result: str, domain: str = "b.example", selector: str = "sel") -> MethodResult:
    return results.dkim_result(DkimVerdict(result, domain, selector, "abcdefghijkl"))


def dmarc(result: str, domain: str = "b.example", policy: str = "reject") -> MethodResult:
    return results.dmarc_result(result, domain, policy, "none")


ALL_PASS = (spf("pass"), dkim("pass"), dmarc("pass"), results.arc_result("none"))
ALL_PASS_JSON = {
    "verdict": "pass",
    "spf": {"result": "pass", "domain": "b.example"},
    "dkim": [{"result": "pass", "domain": "b.example", "selector": "sel"}],
    "dmarc": {"result": "pass", "domain": "b.example", "policy": "reject"},
    "arc": {"result": "none"},
}


# --- which field counts ----------------------------------------------------------------------------


def test_the_topmost_field_naming_our_host_is_the_one_read() -> None:
    fields = [
        value("elsewhere.example", dmarc("fail")),  # above ours: another server's claim
        value("MX.Test.", *ALL_PASS),  # ours: names compare without case or a final dot
        value(HOST, dmarc("fail")),  # lower down: an older field, not the one we added last
    ]
    found = authresults.ours(fields, HOST)
    assert found is not None and found.to_json() == ALL_PASS_JSON


def test_a_field_naming_another_host_is_never_read() -> None:
    assert authresults.ours([value("evil.example", *ALL_PASS)], HOST) is None
    assert authresults.ours([value(f"{HOST}.evil.example", *ALL_PASS)], HOST) is None
    assert authresults.ours([], HOST) is None


def test_a_field_of_ours_that_does_not_parse_gives_no_results() -> None:
    """No guess, and no falling through to a lower field that names us."""
    assert authresults.ours([f"{HOST}; spf=", value(HOST, *ALL_PASS)], HOST) is None


def test_a_field_of_ours_with_no_results_is_checked_with_none_found() -> None:
    found = authresults.ours([value(HOST)], HOST)
    assert found == Authentication()
    assert found.to_json() == {"verdict": "none", "spf": None, "dkim": [], "dmarc": None, "arc": None}


def test_fields_other_software_writes_are_read_the_same() -> None:
    """OpenDKIM/OpenDMARC/Gmail style: header.i instead of header.d, an address as
    smtp.mailfrom, upper-case keywords and policy, comments and reasons."""
    text = (
        f"{HOST};\r\n dkim=PASS (2048-bit key) header.i=@Shop.Example header.s=s1 header.b=XyZ;\r\n"
        ' spf=softfail (domain does not designate) reason="not listed" smtp.mailfrom=Bounce+1@Shop.Example;\r\n'
        " spf=pass smtp.helo=out.shop.example;\r\n"
        " dmarc=fail (p=QUARANTINE sp=NONE dis=QUARANTINE) header.from=shop.example;\r\n"
        " iprev=pass policy.iprev=192.0.2.1; x-future=maybe header.d=x.example"
    )
    found = authresults.ours([text], HOST)
    assert found == Authentication(
        spf=Check("softfail", "shop.example"),  # MAIL FROM before HELO, whatever the order
        dkim=(Check("pass", "shop.example", "s1"),),
        dmarc=Check("fail", "shop.example", policy="quarantine"),
    )


def test_what_is_kept_is_bounded() -> None:
    long_name = "a" * 250 + ".example"
    found = authresults.from_results(
        [
            MethodResult("spf", "pass", (Property("smtp", "mailfrom", long_name),)),
            MethodResult("dmarc", "hardfail"),  # not a DMARC result: nothing could search it
            MethodResult("arc", "pass"),
            *[dkim("fail", f"d{number}.example") for number in range(20)],
        ]
    )
    assert found.spf == Check("pass", None)
    assert found.dmarc is None and found.arc == Check("pass")
    assert len(found.dkim) == authresults.MAX_SIGNATURES


def test_stored_form_reads_back_and_junk_reads_as_nothing() -> None:
    found = authresults.ours([value(HOST, *ALL_PASS, dkim("fail", "list.example", "l"))], HOST)
    assert found is not None
    assert authresults.loads(authresults.dumps(found)) == found
    for junk in (None, 3, "", "{", "[]", '{"spf": 1}', '{"spf": null}'):
        assert authresults.loads(junk) is None


@pytest.mark.parametrize("html", [None, "<p>hi</p>"], ids=["one part", "multipart"])
def test_the_summary_holds_every_field_top_first(html: str | None) -> None:
    mail = make_message("ann@example.test", "s", html=html)
    data = field(HOST, *ALL_PASS) + field("elsewhere.example", dmarc("fail")) + mail.as_bytes()
    summary = message.summarise_stream(io.BytesIO(data))
    assert summary.auth_results == (value(HOST, *ALL_PASS), value("elsewhere.example", dmarc("fail")))
    many = b"".join(field(f"n{number}.example") for number in range(20)) + mail.as_bytes()
    assert len(message.summarise_stream(io.BytesIO(many)).auth_results) == message.MAX_AUTH_FIELDS


# --- the verdict (auth:) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("found", "verdict"),
    [
        # DMARC decides when it reached a verdict...
        ((spf("fail"), dkim("pass"), dmarc("pass")), "pass"),  # forwarded: SPF broke, DKIM carried it
        ((spf("pass", "elsewhere.example"), dmarc("fail")), "fail"),  # SPF passed for another domain
        # ...and without one, any failure fails, else a pass passes.
        ((spf("softfail"),), "fail"),
        ((spf("pass"), dkim("fail")), "fail"),
        ((dkim("fail"), dkim("pass", "list.example")), "pass"),  # one good signature is enough
        ((spf("fail"), dmarc("none")), "fail"),
        ((spf("pass"), dmarc("temperror")), "pass"),
        ((dkim("pass"),), "pass"),
        ((spf("neutral"), dkim("permerror")), "none"),
        ((results.arc_result("fail"),), "none"),  # ARC authenticates nobody
        ((), "none"),
    ],
)
def test_verdict(found: tuple[MethodResult, ...], verdict: str) -> None:
    assert authresults.from_results(found).verdict == verdict


# --- over SMTP, through the index, into the API --------------------------------------------------


@pytest.fixture
def mail(server: RunningServer) -> RunningServer:
    """Mail as the SMTP side leaves it: each message checked on arrival carries our field."""
    to = "ann@example.test"
    send_with_fields(server, make_message(to, "all pass"), field(HOST, *ALL_PASS))
    send_with_fields(
        server,
        make_message(to, "spoofed"),
        field(
            HOST,
            spf("softfail"),
            dkim("fail"),
            dmarc("fail", policy="quarantine"),
            results.arc_result("none"),
        ),
    )
    send_with_fields(
        server,
        make_message(to, "list copy"),
        field(
            HOST, spf("fail", "list.example"), dkim("fail"), dkim("pass", "list.example", "l2"), dmarc("pass")
        ),
    )
    # A sender's forgery naming another authserv-id, above ours: ignored, ours counts.
    send_with_fields(
        server, make_message(to, "forged above"), field("evil.example", *ALL_PASS), field(HOST, dmarc("fail"))
    )
    # Only somebody else's claim: not checked by us, so no results at all.
    send_with_fields(server, make_message(to, "forged only"), field("evil.example", *ALL_PASS))
    send(server, make_message(to, "not checked"))
    return server


def listed(http: httpx.Client, query: str = "") -> dict[str, Any]:
    return {m["subject"]: m["authentication"] for m in messages(http, q=query)["messages"]}


def found(http: httpx.Client, query: str) -> list[str]:
    return sorted(listed(http, query))


def test_the_api_shows_our_results_and_nobody_elses(mail: RunningServer) -> None:
    with client(mail) as http:
        shown = listed(http)
        assert shown["all pass"] == ALL_PASS_JSON
        assert shown["spoofed"] == {
            "verdict": "fail",
            "spf": {"result": "softfail", "domain": "b.example"},
            "dkim": [{"result": "fail", "domain": "b.example", "selector": "sel"}],
            "dmarc": {"result": "fail", "domain": "b.example", "policy": "quarantine"},
            "arc": {"result": "none"},
        }
        assert [sig["result"] for sig in shown["list copy"]["dkim"]] == ["fail", "pass"]
        assert shown["forged above"]["verdict"] == "fail" and shown["forged above"]["spf"] is None
        assert shown["forged only"] is None
        assert shown["not checked"] is None
        # One message says what its row in the list says.
        first = messages(http, q='subject:"all pass"')["messages"][0]
        one = http.get(f"/api/v1/messages/{first['id']}").json()
        assert one["authentication"] == ALL_PASS_JSON


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("auth:fail", ["forged above", "spoofed"]),
        ("auth:pass", ["all pass", "list copy"]),
        ("auth:none", ["forged only", "not checked"]),  # unchecked mail has no verdict
        ("AUTH:PASS", ["all pass", "list copy"]),
        ("-auth:fail", ["all pass", "forged only", "list copy", "not checked"]),
        ("dmarc:pass", ["all pass", "list copy"]),
        ("dmarc:fail spoofed", ["spoofed"]),
        ("spf:softfail", ["spoofed"]),
        ("spf:fail", ["list copy"]),
        ("spf:none", []),  # no SPF result at all is not SPF "none"
        ("dkim:fail", ["list copy", "spoofed"]),  # any signature
        ("dkim:pass -dkim:fail", ["all pass"]),
        ("arc:none", ["all pass", "spoofed"]),
        ("auth:pass -subject:list", ["all pass"]),
    ],
)
def test_search_by_results(mail: RunningServer, query: str, expected: list[str]) -> None:
    with client(mail) as http:
        assert found(http, query) == expected
        assert messages(http, q=query)["total"] == len(expected)
        # Within a mailbox, searched as an index of (mailbox, results) answers it.
        assert messages(http, q=query, mailbox="ann@example.test")["total"] == len(expected)
        assert messages(http, q=query, mailbox="bob@example.test")["total"] == 0


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("auth:maybe", "auth:maybe: expected auth:pass, fail, none"),
        ("dmarc:softfail", "dmarc:softfail: expected dmarc:pass, fail, none, temperror, permerror"),
        ("-arc:PASSED", "arc:PASSED: expected arc:pass, fail, none"),
    ],
)
def test_an_unknown_result_is_a_search_error(mail: RunningServer, query: str, error: str) -> None:
    with client(mail) as http:
        response = http.get("/api/v1/messages", params={"q": query})
        assert response.status_code == 400
        assert response.json() == {"error": error}
