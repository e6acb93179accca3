"""A registry of named plug-ins, shared by the corpora (`pipeline.corpora`) and their synthetic stand-ins
(`pipeline.standins`). A name resolves, in this order, to:

- an object registered in this process (`register`: a test, a notebook);
- a built-in one: the module-level object `attribute` of the package `<package>.<name>`, imported on first use;
- an outside one: an entry point of `group` (the Python packaging convention for plug-ins) in a package
  installed beside mlbpipe, e.g. in its pyproject.toml

      [project.entry-points."mlbpipe.corpora"]
      mycorpus = "mycorpus:CORPUS"

  loaded only when its name is asked for, so that a slow or broken plug-in costs the others nothing.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from typing import Any


class Registry:
    """Plug-ins of one kind (`kind`, for messages: "corpus"), each an instance of `base` with a `name`;
    lookup errors raise `error` (a ValueError subclass) with the fix in the message."""

    def __init__(
        self,
        kind: str,
        base: type,
        package: str,
        builtin: tuple[str, ...],
        attribute: str,
        group: str,
        error: type[Exception],
    ):
        self.kind, self.base, self.package = kind, base, package
        self.builtin, self.attribute, self.group, self.error = builtin, attribute, group, error
        self._registered: dict[str, Any] = {}
        self._loaded: dict[str, EntryPoint] = {}  # name -> the entry point its registered plug-in came from

    def register(self, plugin: Any) -> Any:
        """Make `plugin` available by its name (over a built-in or outside one of the same name)."""
        if not isinstance(plugin, self.base):
            raise TypeError(
                f"a {self.kind} plug-in must be a {_qualified(self.base)}, got {type(plugin).__name__}"
            )
        self._registered[plugin.name] = plugin
        self._loaded.pop(plugin.name, None)
        return plugin

    def unregister(self, name: str) -> None:
        """Forget a plug-in `register` made available (a built-in one loads again on its next `get`)."""
        self._registered.pop(name, None)

    def get(self, name: str) -> Any:
        """The plug-in called `name`; `error` naming the known ones when there is none."""
        if name not in self._registered:
            if name in self.builtin:
                self.register(getattr(import_module(f"{self.package}.{name}"), self.attribute))
            else:
                self._load_outside(name)
        if name not in self._registered:
            raise self.error(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())} (a package installed "
                f"beside mlbpipe adds one with an entry point in the group {self.group!r})"
            )
        return self._registered[name]

    def names(self) -> list[str]:
        """Every name `get` may know: built-in, registered and outside ones (the last not loaded here)."""
        return sorted(set(self.builtin) | set(self._registered) | {ep.name for ep in self._entry_points()})

    def outside(self, name: str) -> EntryPoint | None:
        """The entry point that provides `name` from outside (None: built-in, registered here, or unknown)."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self.builtin or name in self._registered:
            return None
        found = self._entry_points(name)
        if len(found) > 1:
            packages = ", ".join(sorted(_distribution(ep) for ep in found))
            raise self.error(
                f"the {self.kind} {name!r} is provided by more than one installed package ({packages}, entry "
                f"point group {self.group!r}): uninstall all but one"
            )
        return found[0] if found else None

    def _entry_points(self, name: str | None = None) -> list[EntryPoint]:
        return list(
            entry_points(group=self.group) if name is None else entry_points(group=self.group, name=name)
        )

    def _load_outside(self, name: str) -> None:
        entry = self.outside(name)
        if entry is None:
            return
        package = _distribution(entry)
        where = f"entry point {entry.name} = {entry.value} of the package {package} (group {self.group!r})"
        fix = f"fix or reinstall {package}, or remove it (pip uninstall {package})"
        try:
            plugin = entry.load()
        except Exception as err:  # anything a foreign module raises on import: one line, not a traceback
            raise self.error(
                f"the {self.kind} plug-in {name!r} does not load: {where} raised {type(err).__name__}: {err}; {fix}"
            ) from err
        if not isinstance(plugin, self.base):
            raise self.error(
                f"the {self.kind} plug-in {name!r} gives a {type(plugin).__name__}, not a "
                f"{_qualified(self.base)}: {where}; {fix}"
            )
        if plugin.name != name:
            raise self.error(
                f"the {self.kind} plug-in {name!r} calls itself {plugin.name!r}: {where}; an entry point's name "
                f"must be the {self.kind}'s name: {fix}"
            )
        self.register(plugin)
        self._loaded[name] = entry


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _distribution(entry: EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else "(unknown package)"
