"""Every error: its place in the tree, its message and attributes, and a pickle round trip."""

from __future__ import annotations

import pickle

import pytest

import djq
from djq import errors

CASES = [
    (errors.ConfigError(field="lease"), ValueError, {"field": "lease"}),
    (errors.PayloadError("payload is too big"), ValueError, {}),
    (errors.LeaseLost(task_id="7", token="abc"), errors.LeaseError, {"task_id": "7", "token": "abc"}),
    (errors.UnknownTask(task_id="9"), LookupError, {"task_id": "9"}),
    (errors.StorageError("cannot write q", path="q", errno=28), OSError, {"path": "q", "errno": 28}),
    (errors.CorruptQueueError(path="q", reason="empty"), ValueError, {"path": "q", "reason": "empty"}),
    (errors.UnsupportedVersion(path="q", reason="v9"), errors.CorruptQueueError, {"reason": "v9"}),
    (errors.LockTimeout(path="q.lock", timeout=1.5), TimeoutError, {"path": "q.lock", "timeout": 1.5}),
    (errors.BrokerUnavailable("no broker at q.sock"), ConnectionError, {}),
    (errors.BrokerProtocolError("garbage"), errors.BrokerError, {}),
]


@pytest.mark.parametrize(("error", "builtin", "attrs"), CASES, ids=lambda c: type(c).__name__)
def test_error_is_a_djq_error_and_its_builtin(error, builtin, attrs):
    """Each error subclasses DjqError and the builtin that matches it."""
    assert isinstance(error, djq.DjqError)
    assert isinstance(error, builtin)


@pytest.mark.parametrize(("error", "builtin", "attrs"), CASES, ids=lambda c: type(c).__name__)
def test_error_survives_pickle_with_message_and_attributes(error, builtin, attrs):
    """Errors cross process boundaries unchanged: type, message and attributes."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped in-process
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for name, value in attrs.items():
        assert getattr(copy, name) == value


def test_messages_name_what_went_wrong():
    """Messages are built from the data: the path, the reason, the task, the timeout."""
    assert "q/Queue.json" in str(errors.CorruptQueueError(path="q/Queue.json", reason="the file is empty"))
    assert "the file is empty" in str(errors.CorruptQueueError(path="q", reason="the file is empty"))
    assert "task 7" in str(errors.LeaseLost(task_id="7", token="t"))
    assert "1.5 s" in str(errors.LockTimeout(path="q.lock", timeout=1.5))
    assert "'lease'" in str(errors.ConfigError(field="lease"))


def test_every_public_error_is_exported_from_djq():
    """The whole tree is reachable as djq.<Name>."""
    for name in errors.__all__:
        assert getattr(djq, name) is getattr(errors, name)
