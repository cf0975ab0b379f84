"""edge.holds sans-IO helpers: next-link resolution, Grip-Last, the hold registry."""

from __future__ import annotations

import pytest

from edge.grip.holds import HoldRegistry, LinkRefused, LinkTarget, grip_last, resolve_link
from edge.grip.instruct import Hold
from edge.grip.session import ResponseSession
from edge.routes import Target, parse_routes

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
    got = resolve_link(link, "client.example:7999", "/dir/page?x=1", ROUTE)
    assert got == LinkTarget(*expect)
    # next_link_other_hosts changes nothing for links that stay on the route's origin
    assert (
        resolve_link(link, "client.example:7999", "/dir/page?x=1", ROUTE, other_hosts=True) == got
    )


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


@pytest.mark.parametrize(
    "link, target, path",
    [
        (
            "http://evil.example/n?q=1",
            Target("evil.example", 80, host_header="evil.example"),
            b"/n?q=1",
        ),
        (
            "https://far.example:8443/x",
            Target("far.example", 8443, ssl=True, host_header="far.example:8443"),
            b"/x",
        ),
        ("//evil.example/n", Target("evil.example", 80, host_header="evil.example"), b"/n"),
    ],
)
def test_other_hosts_are_fetched_there_when_allowed(link, target, path):
    got = resolve_link(link, "client.example:7999", "/p", ROUTE, other_hosts=True)
    assert got == LinkTarget(path, False, (target,), external=True)


def test_non_http_links_are_refused_even_when_other_hosts_are_allowed():
    with pytest.raises(LinkRefused):
        resolve_link("ftp://far.example/n", "client.example:7999", "/p", ROUTE, other_hosts=True)


def test_grip_last_strips_the_route_prefix_and_skips_unknown():
    assert grip_last(["p-a", "p-b", "p-c"], "p-", {"p-a": "1", "p-c": "x;y"}) == [
        (b"Grip-Last", b"a; last-id=1"),
        (b"Grip-Last", b"c; last-id=x;y"),
    ]


def test_registry_recover_queues_low_priority_updates_and_first_subscription_deadline():
    reg = HoldRegistry(updates_per_s=10)
    a, b = (
        ResponseSession(Hold(mode="response"), True, 60.0),
        ResponseSession(Hold(mode="response"), True, 60.0),
    )
    reg.add(a)
    reg.add(b)
    reg.discard(b)
    assert reg.recover(5.0) == 1 and not a.retry and not b.retry
    assert reg.limiter.next_due() == pytest.approx(5.1)  # Pushpin's batch wait: one interval
    assert reg.limiter.pop_due(5.1) == [a]
    reg.first_subscribed("c", 10.0)
    assert reg.first_sub_deadline(["c", "d"], 10.2) == 11.0
    assert reg.first_sub_deadline(["c"], 11.5) is None
    assert reg.first_sub_deadline(["d"], 10.2) is None


def test_sessions_of_one_hold_share_its_filters_and_names_and_other_holds_get_their_own():
    from edge.grip import session as sessmod
    from edge.grip.instruct import Channel, Hold
    from edge.grip.session import ResponseSession

    def hold(*chans: Channel) -> Hold:
        return Hold(mode="response", channels=chans, body=b"t")

    a = hold(Channel("a", filters=("skip-self",)), Channel("b"))
    s1 = ResponseSession(a, keep_alive=True, deadline=9)
    s2 = ResponseSession(a, keep_alive=True, deadline=9)
    assert s1.filters == {"a": ("skip-self",)} and s1.channel_names == {"a", "b"}
    assert s2.filters is s1.filters and s2.channel_names is s1.channel_names
    # the memo keeps the channels, never the hold (whose initial body may be large)
    assert all(not isinstance(x, Hold) for v in sessmod._BY_HOLD.values() for x in v)
    # a remembered answer under another hold's channels' id (an id is reused once its object
    # is gone): never taken for them
    b = hold(Channel("c"))
    sessmod._BY_HOLD[id(b.channels)] = sessmod._BY_HOLD[id(a.channels)]
    s3 = ResponseSession(b, keep_alive=True, deadline=9)
    assert s3.filters == {} and s3.channel_names == {"c"}
