"""edge.filters: skip-self, skip-users, require-sub, var-subst (table-driven)."""

from __future__ import annotations

import pytest

from edge.grip.filters import FilterError, apply, var_subst


@pytest.mark.parametrize(
    "filters, sub, pub, channels, content, expect",
    [
        (("skip-self",), {"user": "a"}, {"sender": "a"}, (), b"x", None),
        (("skip-self",), {"user": "a"}, {"sender": "b"}, (), b"x", b"x"),
        (("skip-self",), {}, {"sender": ""}, (), b"x", b"x"),
        (("skip-users",), {"user": "b"}, {"skip_users": "a, b ,c"}, (), b"x", None),
        (("skip-users",), {"user": "d"}, {"skip_users": "a,b"}, (), b"x", b"x"),
        (("require-sub",), {}, {"require_sub": "side"}, ("main",), b"x", None),
        (("require-sub",), {}, {"require_sub": "side"}, ("main", "side"), b"x", b"x"),
        (("require-sub",), {}, {}, ("main",), b"x", b"x"),
        (("var-subst",), {"user": "al"}, {}, (), b"hi %(user)s 100%%", b"hi al 100%"),
        (("var-subst", "skip-self"), {"user": "al"}, {"sender": "al"}, (), b"%(user)s", None),
        (("build-id", "unknown"), {}, {}, (), b"%(x)s", b"%(x)s"),  # ignored, as Pushpin
    ],
)
def test_filters(filters, sub, pub, channels, content, expect):
    assert apply(filters, sub, pub, channels, content) == expect


@pytest.mark.parametrize(
    "content, error",
    [
        (b"%(nope)s", "No such variable 'nope'"),
        (b"%(user)d", "Unknown directive 'd'"),
        (b"50%", "Unexpected end of format"),
        (b"%(user", "Unterminated directive argument"),
    ],
)
def test_var_subst_errors(content, error):
    with pytest.raises(FilterError, match=error):
        var_subst(content, {"user": "u"})
