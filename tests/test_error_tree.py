"""One error tree: every exception class defined in broker/, edge/ and gripcast/ derives from
``broker.errors.GripcastError`` (protocol errors under ``ProtocolError``, split local/remote as
h11 does), and no two of them share a name."""

import importlib
import inspect
import pkgutil

import broker
import edge
import gripcast
from broker.errors import (
    ConfigError,
    GripcastError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)


def _modules():
    for pkg in (broker, edge, gripcast):
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            yield importlib.import_module(info.name)


def _exception_classes():
    seen = {}
    for mod in _modules():
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and issubclass(cls, BaseException):
                seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return seen


def test_tree_shape():
    assert issubclass(ProtocolError, GripcastError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ConfigError, GripcastError) and not issubclass(ConfigError, ProtocolError)
    e = RemoteProtocolError("bad", status=413, close_code=1009)
    assert (e.reason, e.status, e.close_code) == ("bad", 413, 1009)


def test_every_exception_class_is_in_the_tree():
    classes = _exception_classes()
    assert len(classes) > 20, sorted(classes)  # the walk really found them
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, GripcastError))
    assert outside == [], f"exception classes outside GripcastError: {outside}"


def test_exception_names_are_distinct():
    by_name: dict[str, list[str]] = {}
    for full, cls in _exception_classes().items():
        by_name.setdefault(cls.__name__, []).append(full)
    dup = {n: v for n, v in by_name.items() if len(v) > 1}
    assert dup == {}, f"two exception classes share a name: {dup}"
