"""broker.store.sentinel (sans-IO): the redis+sentinel:// URL form, the sentinels' replies, and
the config keys that go with it.  No sockets."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import store as stores
from broker.config import Config, validate
from broker.errors import ConfigError
from broker.store.sentinel import (
    SentinelReplyError,
    SentinelURL,
    SwitchMaster,
    is_master_role,
    is_sentinel_url,
    master_address,
    needs_new_master,
    parse_sentinel_url,
    parse_switch_master,
)


def problems(url: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_sentinel_url(url)
    return exc.value.problems


# -- the URL ------------------------------------------------------------------------------------


def test_full_url():
    u = parse_sentinel_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/mymaster/3"
        "?sentinel_password=sp"
    )
    assert u == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381)),
        master_name="mymaster",
        db=3,
        password="s@cret",
        sentinel_password="sp",
    )
    assert u.describe() == "redis+sentinel://10.0.0.1:26380,10.0.0.2:26379,[::1]:26381/mymaster/3"


def test_minimal_url_defaults():
    u = parse_sentinel_url("redis+sentinel://sentinel.local/mymaster")
    assert u == SentinelURL((("sentinel.local", 26379),), "mymaster", 0, None, None)
    assert parse_sentinel_url("redis+sentinel://h:1/m/").db == 0  # a trailing slash is fine


def test_user_name_is_ignored_password_kept():
    assert parse_sentinel_url("redis+sentinel://user:pw@h/m").password == "pw"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+sentinel:///mymaster", "lists no sentinel"),
        ("redis+sentinel://h:26379", "needs the master name"),
        ("redis+sentinel://h:26379/", "needs the master name"),
        ("redis+sentinel://h:26379/m/x", "database must be a number"),
        ("redis+sentinel://h:26379/m/0/extra", "path is /<master-name>[/db]"),
        ("redis+sentinel://h:99999/m", "bad port"),
        ("redis+sentinel://h:0/m", "bad port"),
        ("redis+sentinel://h:abc/m", "bad port"),
        ("redis+sentinel://:26379/m", "has no host"),
        ("redis+sentinel://h1,,h2/m", "has no host"),
        ("redis+sentinel://[::1/m", "unclosed"),
        ("redis+sentinel://::1:26379/m", "[brackets]"),
        ("redis+sentinel://h/m?db=2", "unknown option 'db'"),
        ("redis+sentinel://h:1,h:1/m", "twice"),
        ("redis://h/m", "must start with redis+sentinel://"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, fragment):
    found = problems(url)
    assert any(fragment in p for p in found), found
    assert all(p.startswith("store: ") for p in found)


def test_every_problem_is_reported_at_once():
    assert len(problems("redis+sentinel://h:abc/")) == 2


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
            st.integers(1, 65535),
        ),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    st.integers(0, 15),
)
def test_describe_round_trips(sentinels, name, db):
    u = SentinelURL(tuple(sentinels), name, db)
    assert parse_sentinel_url(u.describe()) == u


def test_is_sentinel_url():
    assert is_sentinel_url("redis+sentinel://h/m")
    assert not is_sentinel_url("redis://h:6379/0")
    assert not is_sentinel_url("memory")


# -- config -------------------------------------------------------------------------------------


def test_config_accepts_sentinel_url_and_reports_its_problems():
    assert validate(Config(store="redis+sentinel://a:1,b:2/m/1")) == []
    found = validate(Config(store="redis+sentinel://a:1/"))
    assert any("master name" in p for p in found), found


def test_config_wait_keys():
    assert validate(Config(store="redis://h/0", redis_wait_replicas=1)) == []
    assert any("redis_wait_replicas" in p for p in validate(Config(redis_wait_replicas=-1)))
    assert any(
        "redis_wait_timeout_ms" in p
        for p in validate(Config(store="redis://h/0", redis_wait_timeout_ms=0))
    )
    assert any(
        "needs a Redis store" in p for p in validate(Config(store="memory", redis_wait_replicas=1))
    )


def test_open_store_wires_the_locator_and_wait():
    cfg = Config(
        store="redis+sentinel://:pw@a:1,b:2/m/2", redis_wait_replicas=1, redis_wait_timeout_ms=250
    )
    store = stores.open_store(cfg)  # no I/O yet
    assert store.name == "redis"
    assert store.locator is not None and store.locator.url.sentinels == (("a", 1), ("b", 2))
    assert (store.wait_replicas, store.wait_timeout_ms) == (1, 250)
    assert store.client.db == 2
    assert store.client.timeout_s > 0.25  # a round trip includes WAIT's timeout
    assert stores.describe(cfg) == "redis+sentinel://a:1,b:2/m/2 wait_replicas=1"
    assert "pw" not in stores.describe(cfg)


# -- the replies --------------------------------------------------------------------------------


def test_master_address():
    assert master_address([b"127.0.0.1", b"6380"]) == ("127.0.0.1", 6380)
    assert master_address(None) is None  # the sentinel does not know the name


@pytest.mark.parametrize(
    "reply", [[b"h"], [b"h", b"x"], [b"", b"1"], [b"h", b"0"], b"h:1", 5, [b"h", b"1", b"2"]]
)
def test_master_address_refuses_odd_replies(reply):
    with pytest.raises(SentinelReplyError):
        master_address(reply)


def test_role():
    assert is_master_role([b"master", 3129659, [[b"127.0.0.1", b"9001", b"3129242"]]])
    assert not is_master_role([b"slave", b"127.0.0.1", 9000, b"connected", 3167038])
    assert not is_master_role([b"sentinel", [b"mymaster"]])
    with pytest.raises(SentinelReplyError):
        is_master_role([])


@pytest.mark.parametrize(
    ("error", "moved"),
    [
        ("READONLY You can't write against a read only replica.", True),
        ("LOADING Redis is loading the dataset in memory", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        (
            "ERR Error running script (call to f_x): @user_script:3: -READONLY You can't write "
            "against a read only replica.",
            True,
        ),
        ("NOSCRIPT No matching script. Please use EVAL.", False),
        ("OOM command not allowed when used memory > 'maxmemory'.", False),
        ("ERR unknown command", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ],
)
def test_needs_new_master(error, moved):
    assert needs_new_master(error) is moved
    assert needs_new_master(str(hiredis.ReplyError(error))) is moved


def test_switch_master():
    msg = [b"message", b"+switch-master", b"gcmaster 127.0.0.1 6379 127.0.0.1 6380"]
    assert parse_switch_master(msg) == SwitchMaster(
        "gcmaster", ("127.0.0.1", 6379), ("127.0.0.1", 6380)
    )
    assert parse_switch_master([b"subscribe", b"+switch-master", 1]) is None
    assert parse_switch_master([b"message", b"+sdown", b"master gcmaster 127.0.0.1 6379"]) is None
    with pytest.raises(SentinelReplyError):
        parse_switch_master([b"message", b"+switch-master", b"gcmaster 127.0.0.1"])
