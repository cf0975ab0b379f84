"""edge.jsonpatch: RFC 6902 operations (table-driven, including the RFC's appendix cases)."""

from __future__ import annotations

import json

import pytest

from edge.grip.jsonpatch import PatchError, apply_patch, patch_body


@pytest.mark.parametrize(
    "doc, ops, expect",
    [
        (
            {"foo": "bar"},
            [{"op": "add", "path": "/baz", "value": "qux"}],
            {"foo": "bar", "baz": "qux"},
        ),
        (
            {"foo": ["bar", "baz"]},
            [{"op": "add", "path": "/foo/1", "value": "qux"}],
            {"foo": ["bar", "qux", "baz"]},
        ),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/-", "value": 2}], {"foo": [1, 2]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        (
            {"foo": ["bar", "qux", "baz"]},
            [{"op": "remove", "path": "/foo/1"}],
            {"foo": ["bar", "baz"]},
        ),
        ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
        (
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
        ),
        (
            {"foo": ["all", "grass", "cows", "eat"]},
            [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
            {"foo": ["all", "cows", "eat", "grass"]},
        ),
        (
            {"a": {"b": 1}},
            [{"op": "copy", "from": "/a", "path": "/c"}],
            {"a": {"b": 1}, "c": {"b": 1}},
        ),
        ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "qux"}], {"baz": "qux"}),
        (
            {"a/b": 1, "m~n": 2},
            [{"op": "replace", "path": "/a~1b", "value": 3}, {"op": "remove", "path": "/m~0n"}],
            {"a/b": 3},
        ),
        ({"x": 1}, [{"op": "replace", "path": "", "value": [1]}], [1]),
    ],
)
def test_patch(doc, ops, expect):
    assert apply_patch(doc, ops) == expect


@pytest.mark.parametrize(
    "doc, ops",
    [
        ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}]),
        ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        ({"foo": []}, [{"op": "remove", "path": "/foo/0"}]),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/01", "value": 2}]),
        ({}, [{"op": "frobnicate", "path": "/a"}]),
        ({}, [{"op": "add", "path": "a", "value": 1}]),
        ({}, [{"op": "add", "path": "/a"}]),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        ({}, "not a list"),
    ],
)
def test_bad_patches_raise(doc, ops):
    with pytest.raises(PatchError):
        apply_patch(doc, ops)


def test_patch_body_and_atomicity():
    doc = {"n": 0}
    assert patch_body(b'{"n": 0}', [{"op": "replace", "path": "/n", "value": 1}]) == b'{"n":1}'
    with pytest.raises(PatchError):
        apply_patch(
            doc,
            [{"op": "replace", "path": "/n", "value": 1}, {"op": "test", "path": "/n", "value": 5}],
        )
    assert doc == {"n": 0}
    with pytest.raises(PatchError):
        patch_body(b"not json", [])


# -- limits (issue 11 item 2): a publisher's patch cannot stall or kill the edge ---------------


def test_copy_from_the_root_is_stopped_at_the_result_limit():
    import time

    from edge.grip.jsonpatch import MAX_PATCH_RESULT_BYTES, PatchLimitError

    doc = {"a": "x" * 1000}
    bomb = [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(30)]
    t0 = time.perf_counter()
    with pytest.raises(PatchLimitError, match=str(MAX_PATCH_RESULT_BYTES)):
        apply_patch(doc, bomb)
    with pytest.raises(PatchError):
        patch_body(json.dumps(doc).encode(), bomb)
    assert time.perf_counter() - t0 < 1.0  # stopped at ~1 MiB, not after 2**30 copies
    # ten doublings of a 1 KB document stay under the limit and apply
    assert len(patch_body(json.dumps(doc).encode(), bomb[:9])) < MAX_PATCH_RESULT_BYTES


def test_operation_count_limit():
    from edge.grip.jsonpatch import MAX_PATCH_OPS

    ops = [{"op": "test", "path": "", "value": {}}] * MAX_PATCH_OPS
    assert apply_patch({}, ops) == {}
    with pytest.raises(PatchError, match="more than 100 operations"):
        apply_patch({}, ops + ops[:1])


@pytest.mark.parametrize("depth", [65, 600, 5000])
def test_deep_values_are_a_patch_error_not_a_recursion_error(depth):
    deep: object = 1
    for _ in range(depth):
        deep = [deep]
    for ops in (
        [{"op": "add", "path": "/d", "value": deep}],
        [{"op": "replace", "path": "", "value": deep}],
        [{"op": "test", "path": "/a", "value": deep}],
    ):
        with pytest.raises(PatchError):
            patch_body(b'{"a":1}', ops)
    with pytest.raises(PatchError):  # the document itself too deep
        apply_patch(deep, [])


def test_depth_counts_the_path_a_value_is_added_at():
    from edge.grip.jsonpatch import MAX_PATCH_DEPTH

    doc: object = {}
    cur = doc
    for _ in range(MAX_PATCH_DEPTH - 1):
        cur["n"] = {}
        cur = cur["n"]
    path = "/n" * (MAX_PATCH_DEPTH - 1)
    assert apply_patch(doc, [{"op": "add", "path": path + "/x", "value": 1}])
    with pytest.raises(PatchError):
        apply_patch(doc, [{"op": "add", "path": path + "/x", "value": [1]}])
    with pytest.raises(PatchError):  # a move that sinks a subtree past the depth
        apply_patch(
            {"a": {"b": {"c": [[1]]}}, "deep": doc},
            [{"op": "move", "from": "/a", "path": "/deep" + path + "/x"}],
        )


def test_odd_array_indexes_are_patch_errors():
    for token in ["\u00b2", "9" * 5000, "-1"]:
        with pytest.raises(PatchError):
            apply_patch({"a": [1]}, [{"op": "replace", "path": f"/a/{token}", "value": 2}])


def test_a_value_that_is_not_text_is_a_patch_error():
    with pytest.raises(PatchError):
        patch_body(b"{}", [{"op": "add", "path": "/a", "value": "\udcff"}])
