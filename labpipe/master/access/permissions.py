"""Users, groups and what each group may run and do: ``[permissions]`` of labpipe.toml.

Off unless ``enabled = true``. Then every call names a group:

- with TLS, the client certificate's subject: its ``tls_group_field`` (default
  ``organizationalUnitName``, the ``OU``) is the group and its ``commonName`` the user
  (a certificate without that field: the group ``users`` gives its common name, else
  ``default_group``). A client's own ``group=`` is then only accepted when it says the
  same;
- without TLS, the client's word: ``group=`` (``labpipe-client --group``), else the
  group ``users`` gives its ``user=``, else ``default_group``.

A group not in ``[permissions.groups]``, or no group at all, is refused for every
changing request (reads stay open). Each group has:

- patterns for ``experiments`` (matched against the expid's file, and
  ``FILE:CLASS``), ``plans`` (the plan's name: an explist entry whose arguments are a
  plan's, or ``submit_plan``'s name) and ``devices`` (every string among the
  submission's arguments that is a device_db key, and ``devarg_override``'s keys):
  ``allowed_*`` (default ``["*"]``) and ``forbidden_*`` (default none). A name is
  allowed when an allowed pattern matches it and no forbidden one does. A pattern is a
  shell-style glob (``calib/*``, ``*_scan``) or, starting with ``:``, a regular
  expression searched in the name (``:^count$``), as in bluesky-queueserver's
  ``user_group_permissions.yaml``;
- rights (default false): ``edit_queue``, ``write_datasets``, ``terminate``,
  ``submit_content``, ``call_functions``.

Every refusal is one ``PermissionError`` line naming the rule, e.g.
``schedule.submit: refused for user bob (group observers): experiment
'dangerous/laser.py:Fire' matches forbidden_experiments 'dangerous/*' of
[permissions.groups.observers]``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labpipe.config import ConfigError, GroupConfig, PermissionsConfig
from labpipe.master.access.caller import Caller, current_caller, subject_fields

__all__ = ["Permissions", "PermissionRefused", "PermissionsTarget", "RIGHTS",
           "devices_named", "is_plan_entry"]

#: The rights of a group, with what each lets it do (for refusals).
RIGHTS = {
    "edit_queue": "edit the queue",
    "write_datasets": "write datasets",
    "terminate": "terminate the master",
    "submit_content": "submit experiments by content",
    "call_functions": "execute functions",
}
_KINDS = ("experiments", "plans", "devices")


class PermissionRefused(PermissionError):
    """A request the group's permissions refuse (one line naming the rule)."""


class _Pattern:
    def __init__(self, text: str, where: str):
        self.text = text
        if text.startswith(":"):
            try:
                self._regex = re.compile(text[1:])
            except re.error as exc:
                raise ConfigError(f"labpipe.toml: {where}: {text!r} is not a regular "
                                  f"expression: {exc}") from None
        else:
            self._regex = re.compile(fnmatch.translate(text))

    def matches(self, name: str) -> bool:
        if self.text.startswith(":"):
            return self._regex.search(name) is not None
        return self._regex.match(name) is not None


@dataclass(frozen=True)
class _Group:
    name: str
    config: GroupConfig
    allowed: dict[str, tuple[_Pattern, ...]]
    forbidden: dict[str, tuple[_Pattern, ...]]

    def rule(self, kind: str, names: Iterable[str]) -> str | None:
        """Why the first of names (one thing, several spellings) is refused, or None."""
        names = list(names)
        section = f"[permissions.groups.{self.name}]"
        for pattern in self.forbidden[kind]:
            for name in names:
                if pattern.matches(name):
                    return (f"{kind[:-1]} {name!r} matches forbidden_{kind} "
                            f"{pattern.text!r} of {section}")
        if any(p.matches(name) for p in self.allowed[kind] for name in names):
            return None
        shown = ", ".join(repr(p.text) for p in self.allowed[kind]) or "none"
        return (f"{kind[:-1]} {names[-1]!r} matches no allowed_{kind} of {section} "
                f"({shown})")


def is_plan_entry(entry: Mapping[str, Any]) -> bool:
    """Whether an explist entry is a bluesky plan (its arguments are in the group
    ``plan`` that ``labpipe.bluesky.plans`` gives them)."""
    arginfo = entry.get("arginfo")
    return isinstance(arginfo, dict) and any(
        isinstance(info, (list, tuple)) and len(info) > 1 and info[1] == "plan"
        for info in arginfo.values())


def devices_named(expid: Mapping[str, Any], device_keys: Collection[str]) -> list[str]:
    """The device_db keys a submission names: strings among its argument values (at
    any depth) that are keys, and the keys of ``devarg_override``."""
    found: dict[str, None] = {}

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 64:
            return
        if isinstance(value, str):
            if value in device_keys:
                found[value] = None
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, depth + 1)
    walk(expid.get("arguments") or {})
    for key in expid.get("devarg_override") or {}:
        if isinstance(key, str):
            found[key] = None
    return list(found)


class Permissions:
    """The lab's ``[permissions]``: who is calling, and what their group may do."""

    def __init__(self, config: PermissionsConfig):
        self.config = config
        self.enabled = config.enabled
        self.groups: dict[str, _Group] = self._groups(config)

    def reload(self, config: PermissionsConfig) -> None:
        """Take new ``[permissions]`` (bluesky-queueserver's ``permissions_reload``):
        ConfigError, and nothing changed, when they are not valid."""
        groups = self._groups(config)
        self.config, self.enabled, self.groups = config, config.enabled, groups

    @staticmethod
    def _groups(config: PermissionsConfig) -> dict[str, _Group]:
        groups: dict[str, _Group] = {}
        for name, group in config.groups.items():
            where = f"[permissions.groups.{name}]"
            allowed = {k: tuple(_Pattern(p, f"{where} allowed_{k}")
                                for p in getattr(group, f"allowed_{k}")) for k in _KINDS}
            forbidden = {k: tuple(_Pattern(p, f"{where} forbidden_{k}")
                                  for p in getattr(group, f"forbidden_{k}")) for k in _KINDS}
            groups[name] = _Group(name, group, allowed, forbidden)
        for user, group_name in config.users.items():
            if group_name not in groups:
                raise ConfigError(f"labpipe.toml: [permissions.users] {user}: no group "
                                  f"{group_name!r} in [permissions.groups]")
        if config.default_group is not None and config.default_group not in groups:
            raise ConfigError(f"labpipe.toml: [permissions] default_group: no group "
                              f"{config.default_group!r} in [permissions.groups]")
        return groups

    # --- who is calling ---------------------------------------------------------------

    def identify(self, user: str | None, group: str | None, peercert: Any) -> Caller:
        """The caller of a request: from the client certificate when there is one,
        else from the client's word (see the module docstring). PermissionRefused
        when the client states a group its certificate contradicts."""
        if peercert:
            fields = subject_fields(peercert)
            cert_user = fields.get("commonName")
            cert_group = fields.get(self.config.tls_group_field)
            source = "certificate"
            if cert_group is None and cert_user in self.config.users:
                cert_group, source = self.config.users[cert_user], "users"
            if cert_group is None and self.config.default_group is not None:
                cert_group, source = self.config.default_group, "default"
            if self.enabled and group is not None and group != cert_group:
                raise PermissionRefused(
                    f"refused: the group comes from the client certificate "
                    f"({self.config.tls_group_field} {cert_group!r}), not {group!r}")
            return Caller(cert_user or user, cert_group, source if cert_group else None)
        if group is not None:
            return Caller(user, group, "client")
        if user is not None and user in self.config.users:
            return Caller(user, self.config.users[user], "users")
        if self.config.default_group is not None:
            return Caller(user, self.config.default_group, "default")
        return Caller(user, None, None)

    def _group(self, caller: Caller, what: str) -> _Group:
        if caller.group is None:
            raise PermissionRefused(
                f"{what}: refused, permissions are on and {caller.describe()} states no "
                "group (labpipe-client --group GROUP; [permissions] default_group)")
        group = self.groups.get(caller.group)
        if group is None:
            raise PermissionRefused(
                f"{what}: refused, group {caller.group!r} is not in [permissions.groups] "
                f"(groups: {', '.join(sorted(self.groups)) or 'none'})")
        return group

    # --- what the gate and the scheduler ask -------------------------------------------

    def check_right(self, caller: Caller, right: str, what: str) -> None:
        """Refuse what unless the caller's group has the right."""
        if not self.enabled:
            return
        group = self._group(caller, what)
        if not getattr(group.config, right):
            raise PermissionRefused(
                f"{what}: refused for {caller.describe()}: the group may not "
                f"{RIGHTS[right]} ([permissions.groups.{group.name}] {right} is not true)")

    def check_submission(self, caller: Caller, expid: Mapping[str, Any],
                         explist: Mapping[str, Any], device_keys: Collection[str],
                         what: str = "schedule.submit") -> None:
        """Refuse a submission whose experiment, plan or devices the caller's group
        may not run, or whose content it may not submit."""
        if not self.enabled:
            return
        group = self._group(caller, what)
        rule = self._submission_rule(group, expid, explist, device_keys)
        if rule is not None:
            raise PermissionRefused(f"{what}: refused for {caller.describe()}: {rule}")

    def _submission_rule(self, group: _Group, expid: Mapping[str, Any],
                         explist: Mapping[str, Any], device_keys: Collection[str]
                         ) -> str | None:
        if "content" in expid and not group.config.submit_content:
            return (f"the group may not submit experiments by content "
                    f"([permissions.groups.{group.name}] submit_content is not true)")
        file = str(expid.get("file") or "")
        class_name = expid.get("class_name")
        names = [file] + ([f"{file}:{class_name}"] if class_name else [])
        rule = group.rule("experiments", names)
        if rule is not None:
            return rule
        if class_name and any(is_plan_entry(e) for e in explist.values()
                              if e.get("class_name") == class_name
                              and e.get("file") == file):
            rule = group.rule("plans", [class_name])
            if rule is not None:
                return rule
        for device in devices_named(expid, device_keys):
            rule = group.rule("devices", [device])
            if rule is not None:
                return rule
        return None

    def allowed(self, group_name: str, explist: Mapping[str, Any],
                device_keys: Collection[str]) -> dict[str, Any]:
        """What a group may run and do: ``{"group", "experiments": [explist names],
        "plans": [plan names], "devices": [device keys], "rights": {right: bool}}``."""
        group = self.groups.get(group_name)
        if group is None:
            raise KeyError(f"permissions.allowed: no group {group_name!r} "
                           f"(groups: {', '.join(sorted(self.groups)) or 'none'})")
        experiments, plans = [], []
        for name, entry in sorted(explist.items()):
            file, cls = str(entry.get("file") or ""), entry.get("class_name")
            spellings = [file] + ([f"{file}:{cls}"] if cls else [])
            if group.rule("experiments", spellings) is not None:
                continue
            if is_plan_entry(entry):
                if group.rule("plans", [str(cls)]) is None:
                    plans.append(str(cls))
                    experiments.append(name)
            else:
                experiments.append(name)
        devices = sorted(d for d in device_keys if group.rule("devices", [d]) is None)
        return {"group": group.name, "experiments": experiments, "plans": sorted(plans),
                "devices": devices,
                "rights": {right: bool(getattr(group.config, right)) for right in RIGHTS}}


class PermissionsTarget:
    """The ``permissions`` RPC target (reads only)."""

    def __init__(self, permissions: Permissions, explist: Callable[[], Mapping[str, Any]],
                 device_keys: Callable[[], Collection[str]]):
        self._permissions = permissions
        self._explist = explist
        self._device_keys = device_keys

    def allowed(self, group: str | None = None) -> dict[str, Any]:
        """What group may run (experiment list names, plans, devices) and its rights;
        None: the caller's own group. With permissions off every group may do all."""
        if group is None:
            group = current_caller.get().group
        if not self._permissions.enabled:
            return {"group": group, "enabled": False,
                    "experiments": sorted(self._explist()), "plans": sorted(
                        {str(e.get("class_name")) for e in self._explist().values()
                         if is_plan_entry(e)}),
                    "devices": sorted(self._device_keys()),
                    "rights": {right: True for right in RIGHTS}}
        if group is None:
            raise PermissionRefused("permissions.allowed: which group? (this call states "
                                    "none: give group, or --group)")
        answer = self._permissions.allowed(group, self._explist(), self._device_keys())
        answer["enabled"] = True
        return answer

    def groups(self) -> dict[str, Any]:
        """``{"enabled": bool, "groups": [names], "you": {"user", "group", "source"}}``:
        the lab's groups and who this call is taken to be."""
        caller = current_caller.get()
        return {"enabled": self._permissions.enabled,
                "groups": sorted(self._permissions.groups),
                "you": {"user": caller.user, "group": caller.group,
                        "source": caller.source}}
