"""``gripcast channels`` / ``gripcast history`` (no sockets): the request paths, the parser
with the publish command's auth options, and the tables."""

from rich.console import Console

from gripcast.channels import channels_path, history_path, preview, render_channels, render_history
from gripcast.cli import build_parser


def test_paths_are_encoded():
    assert history_path("a/b c", "ep:3", 5) == "/channels/a%2Fb%20c/items?limit=5&after=ep%3A3"
    assert history_path("x", None, 100) == "/channels/x/items?limit=100"
    assert channels_path("chat.", "chat.b", 10) == "/channels?limit=10&prefix=chat.&after=chat.b"
    assert channels_path("", None, 100) == "/channels?limit=100"


def test_parser_has_the_publish_auth_options():
    args = build_parser().parse_args(
        ["history", "ch", "--after", "p1", "--limit", "3", "--key", "k", "--iss", "i", "--json"]
    )
    assert (args.channel, args.after, args.limit, args.key, args.iss, args.json) == (
        "ch",
        "p1",
        3,
        "k",
        "i",
        True,
    )
    args = build_parser().parse_args(["channels", "chat.", "--url", "http://h:1/?iss=a&key=b"])
    assert (args.prefix, args.url, args.json) == ("chat.", "http://h:1/?iss=a&key=b", False)


def test_preview():
    assert preview({"formats": {"ws-message": {"content": "hi"}}}) == "hi"
    assert preview({"formats": {"http-stream": {"content": "a\nb"}}}) == "a\\nb"
    assert preview({"formats": {"http-response": {"body-bin": "AAE="}}}) == "(binary)"
    assert preview({"formats": {"http-stream": {"action": "close"}}}) == "(close)"
    assert len(preview({"formats": {"http-stream": {"content": "x" * 500}}})) == 60


def test_tables():
    console = Console(record=True, width=120)
    render_history(
        {
            "channel": "c",
            "epoch": "ep",
            "last_seq": 9,
            "truncated": True,
            "more": True,
            "next": "ep:2",
            "items": [
                {
                    "id": "ep:2",
                    "seq": 2,
                    "publisher_id": "p2",
                    "ts": 0,
                    "formats": {"http-stream": {"content": "hello"}},
                }
            ],
        },
        console,
    )
    render_channels(
        {
            "channels": [{"channel": "room", "subscribers": 3, "by_mode": {"ws": 3}}],
            "edges": 2,
            "counts_age_s": 0.5,
            "more": False,
        },
        console,
    )
    text = console.export_text()
    for part in ("ep:2", "p2", "hello", "truncated", "--after ep:2", "room", "2 edge(s)", "0.5 s"):
        assert part in text, part
