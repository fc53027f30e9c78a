"""The command line's queue flags, derived from ``QueueConfig``'s fields.

One flag per field, from its type: a bool is ``--x``/``--no-x``, an enum takes its values
as choices, a float is seconds (``lease`` is ``--lease-s``), ``file_mode`` is octal. A
flag not given leaves its field out of the parsed arguments, so the component's own
default applies. ``djq.cli`` adds the flags to its parsers and reads them back here.
"""

from __future__ import annotations

import argparse
import enum
import typing
from collections.abc import Sequence
from typing import Any, Final

from .errors import ConfigError
from .model import CONFIG_FIELDS, QueueConfig

__all__ = ["GLOBAL_FIELDS", "OTHER_FIELDS", "add_queue_flags", "queue_options", "refuse_options"]

GLOBAL_FIELDS: Final = ("lock", "storage", "fsync")  #: queue options every command takes
#: the other queue options: for ``broker start``, ``simulate`` and ``sweep`` (``path`` is ``--queue``)
OTHER_FIELDS: Final = tuple(name for name in CONFIG_FIELDS if name not in {"path", *GLOBAL_FIELDS})
_HINTS: Final = typing.get_type_hints(QueueConfig)
_HELP: Final = {  # words for the global ones; the others say their name and default
    "lock": "lock kind (default: flock)",
    "storage": "journal: append each change (default); rewrite: rewrite Queue.json every time",
    "fsync": "fsync every change: durable, slower (default: on; off in simulate and sweep)",
}


def add_queue_flags(group: Any, names: Sequence[str]) -> None:
    """Add a flag per ``QueueConfig`` field, derived from its type.

    Args:
        group: The parser or argument group to add the flags to.
        names: The fields to add a flag for.
    """
    defaults = QueueConfig()
    for name in names:
        kind, default = _kind(name), getattr(defaults, name)
        shown = (
            oct(default)
            if name == "file_mode"
            else "none"
            if default is None
            else getattr(default, "value", default)
        )
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        options["help"] = _HELP.get(name, f"the queue's {name.replace('_', ' ')} (default: {shown})")
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif issubclass(kind, enum.Enum):
            options["choices"] = [k.value for k in kind]
        else:
            options["type"] = _octal if name == "file_mode" else kind
            options["metavar"] = "SECONDS" if kind is float else "MODE" if name == "file_mode" else "N"
        group.add_argument(_flag(name), **options)


def queue_options(args: argparse.Namespace) -> dict[str, Any]:
    """The queue options given on the command line (a flag not given is not here).

    Args:
        args: The parsed command line.

    Returns:
        The given options by ``QueueConfig`` field name.
    """
    return {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS}


def refuse_options(args: argparse.Namespace, why: str) -> None:
    """Refuse queue options given where they cannot apply.

    Args:
        args: The parsed command line.
        why: Why they cannot apply; the message goes on with the flags to drop.

    Raises:
        ConfigError: If any queue option was given.
    """
    given = [_flag(n).replace("--", "--[no-]") if _kind(n) is bool else _flag(n) for n in queue_options(args)]
    if given:
        raise ConfigError(f"{why}: drop {', '.join(given)}", field=next(iter(queue_options(args))))


def _kind(name: str) -> type:
    """The type of a ``QueueConfig`` field, without its ``None``: ``float | None`` -> float."""
    hint = _HINTS[name]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))  # type: ignore[no-any-return]


def _flag(name: str) -> str:
    """``lease`` -> ``--lease-s``: a queue field's flag (a float field is seconds)."""
    return "--" + name.replace("_", "-") + ("-s" if _kind(name) is float else "")


def _octal(text: str) -> int:
    """A file mode in octal: ``640`` or ``0o640``."""
    try:
        return int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal file mode: {text!r}") from None
