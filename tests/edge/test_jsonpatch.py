"""edge.jsonpatch: RFC 6902 operations (table-driven, including the RFC's appendix cases)."""
from __future__ import annotations

import pytest

from edge.jsonpatch import PatchError, apply_patch, patch_body


@pytest.mark.parametrize("doc, ops, expect", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}],
     {"foo": ["bar", "qux", "baz"]}),
    ({"foo": [1]}, [{"op": "add", "path": "/foo/-", "value": 2}], {"foo": [1, 2]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "qux"}], {"baz": "qux"}),
    ({"a/b": 1, "m~n": 2}, [{"op": "replace", "path": "/a~1b", "value": 3},
                            {"op": "remove", "path": "/m~0n"}], {"a/b": 3}),
    ({"x": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
])
def test_patch(doc, ops, expect):
    assert apply_patch(doc, ops) == expect


@pytest.mark.parametrize("doc, ops", [
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}]),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}]),
    ({"foo": []}, [{"op": "remove", "path": "/foo/0"}]),
    ({"foo": [1]}, [{"op": "add", "path": "/foo/01", "value": 2}]),
    ({}, [{"op": "frobnicate", "path": "/a"}]),
    ({}, [{"op": "add", "path": "a", "value": 1}]),
    ({}, [{"op": "add", "path": "/a"}]),
    ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}]),
    ({}, "not a list"),
])
def test_bad_patches_raise(doc, ops):
    with pytest.raises(PatchError):
        apply_patch(doc, ops)


def test_patch_body_and_atomicity():
    doc = {"n": 0}
    assert patch_body(b'{"n": 0}', [{"op": "replace", "path": "/n", "value": 1}]) == b'{"n":1}'
    with pytest.raises(PatchError):
        apply_patch(doc, [{"op": "replace", "path": "/n", "value": 1},
                          {"op": "test", "path": "/n", "value": 5}])
    assert doc == {"n": 0}
    with pytest.raises(PatchError):
        patch_body(b"not json", [])
