"""edge.holds sans-IO helpers: next-link resolution, Grip-Last, the hold registry."""

from __future__ import annotations

import pytest

from edge.grip.holds import HoldRegistry, LinkRefused, grip_last, resolve_link
from edge.routes import parse_routes

ROUTE = parse_routes(["* 127.0.0.1:8080 origin.internal:80"]).routes[0]


@pytest.mark.parametrize(
    "link, expect",
    [
        ("/next?a=1", (b"/next?a=1", True, ())),
        ("next", (b"/dir/next", True, ())),
        ("http://client.example:7999/n", (b"/n", True, ())),
        ("http://127.0.0.1:8080/n", (b"/n", False, (ROUTE.targets[0],))),
        ("http://origin.internal/n", (b"/n", False, (ROUTE.targets[1],))),
    ],
)
def test_resolve_link(link, expect):
    assert resolve_link(link, "client.example:7999", "/dir/page?x=1", ROUTE) == expect


@pytest.mark.parametrize(
    "link",
    [
        "http://evil.example/n",
        "http://127.0.0.1:9999/n",
        "//evil.example/n",
        "ftp://client.example:7999/n",
    ],
)
def test_other_hosts_are_refused(link):
    with pytest.raises(LinkRefused):
        resolve_link(link, "client.example:7999", "/p", ROUTE)


def test_grip_last_strips_the_route_prefix_and_skips_unknown():
    assert grip_last(["p-a", "p-b", "p-c"], "p-", {"p-a": "1", "p-c": "x;y"}) == [
        (b"Grip-Last", b"a; last-id=1"),
        (b"Grip-Last", b"c; last-id=x;y"),
    ]


class S:
    hinted = 0

    def hint(self):
        self.hinted += 1


def test_registry_recover_and_first_subscription_deadline():
    reg = HoldRegistry()
    a, b = S(), S()
    reg.add(a)
    reg.add(b)
    reg.discard(b)
    assert reg.recover() == 1 and a.hinted == 1 and b.hinted == 0
    reg.first_subscribed("c", 10.0)
    assert reg.first_sub_deadline(["c", "d"], 10.2) == 11.0
    assert reg.first_sub_deadline(["c"], 11.5) is None
    assert reg.first_sub_deadline(["d"], 10.2) is None
