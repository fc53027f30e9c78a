"""djq: a file-based producer/consumer queue for seeing and teaching lock contention.

The core is imported here; the toolkit modules are imported explicitly when wanted.
``import djq`` never imports pandas, matplotlib or ipywidgets.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from .aconsumer import AsyncConsumer as AsyncConsumer
from .aconsumer import AsyncDelivery as AsyncDelivery
from .aconsumer import AsyncProducer as AsyncProducer
from .aio import AsyncBaseQueue as AsyncBaseQueue
from .api import BaseQueue as BaseQueue
from .aqueue import AsyncQueue as AsyncQueue
from .aremote import AsyncBrokerClient as AsyncBrokerClient
from .client import Consumer as Consumer
from .client import Delivery as Delivery
from .client import Producer as Producer
from .client import QueueLike as QueueLike
from .errors import BrokerError as BrokerError
from .errors import BrokerProtocolError as BrokerProtocolError
from .errors import BrokerUnavailable as BrokerUnavailable
from .errors import ConfigError as ConfigError
from .errors import CorruptQueueError as CorruptQueueError
from .errors import DjqError as DjqError
from .errors import LeaseError as LeaseError
from .errors import LeaseLost as LeaseLost
from .errors import LockTimeout as LockTimeout
from .errors import PayloadError as PayloadError
from .errors import SimulationError as SimulationError
from .errors import StorageError as StorageError
from .errors import UnknownTask as UnknownTask
from .errors import UnsupportedVersion as UnsupportedVersion
from .manager import BrokerManager as BrokerManager
from .metrics import LockRecorder as LockRecorder
from .model import Lease as Lease
from .model import LockKind as LockKind
from .model import QueueConfig as QueueConfig
from .model import QueueStats as QueueStats
from .model import Task as Task
from .model import TaskState as TaskState
from .opener import open_queue as open
from .queue import Queue as Queue
from .remote import BrokerClient as BrokerClient
from .remote import connect as connect

try:
    __version__ = _metadata.version("djq")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncBaseQueue",
    "AsyncBrokerClient",
    "AsyncConsumer",
    "AsyncDelivery",
    "AsyncProducer",
    "AsyncQueue",
    "BaseQueue",
    "BrokerClient",
    "BrokerError",
    "BrokerManager",
    "BrokerProtocolError",
    "BrokerUnavailable",
    "ConfigError",
    "Consumer",
    "CorruptQueueError",
    "Delivery",
    "DjqError",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LockKind",
    "LockRecorder",
    "LockTimeout",
    "PayloadError",
    "Producer",
    "Queue",
    "QueueConfig",
    "QueueLike",
    "QueueStats",
    "SimulationError",
    "StorageError",
    "Task",
    "TaskState",
    "UnknownTask",
    "UnsupportedVersion",
    "__version__",
    "connect",
    "open",
]
