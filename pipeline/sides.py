"""Per-side registry settings as skopeo spells them, mapped onto the hosts the references name.

skopeo users write ``--src-creds``, ``--dest-tls-verify=false`` or ``--src-authfile``: a
setting for one side of the copy. Our stores are configured per registry host (a
worker opens one client per host, whoever asked for it), so a side's setting applies
to every host its references name. A host named on both sides gets one setting: when
the two sides ask for different ones there, the command is refused rather than one of
them silently winning.

Credentials given on the command line live in memory only: :class:`Credentials` masks
the secret in every ``repr``, and nothing here logs or prints them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imagepush.pipeline.exits import UsageError
from imagepush.transforms.stores.options import HostOptions, Secret, StoreOptions
from imagepush.transforms.stores.refs import parse_reference

if TYPE_CHECKING:  # the registry package is imported only when credentials are given
    from imagepush.transforms.stores.registry.authfile import Credentials


@dataclass(frozen=True)
class Side:
    """What one side's flags ask for; None where the flag was not given."""

    #: The flag prefix: ``src-``, ``dest-`` or ``""`` for one-sided commands (to name a flag in a message).
    prefix: str
    creds: "Credentials | None" = None
    authfile: str | None = None
    tls_verify: bool | None = None

    def flag(self, name: str) -> str:
        return f"--{self.prefix}{name}"

    @property
    def empty(self) -> bool:
        return self.creds is None and self.authfile is None and self.tls_verify is None


def parse_bool(text: str) -> bool:
    """A Go-style boolean flag value (``--tls-verify=false``), as skopeo accepts them."""
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_creds(text: str, flag: str, *, ask: bool | None = None) -> "Credentials":
    """``USER[:PASS]``; a missing password is asked for on the terminal, never read from a pipe.

    ``ask``: whether standard input is a terminal (default: find out).
    """
    from imagepush.transforms.stores.registry.authfile import Credentials

    user, has_password, password = text.partition(":")
    if not user:
        raise UsageError(f"{flag}: give USER[:PASS]")
    if not has_password:
        if ask is None:
            ask = sys.stdin.isatty()
        if not ask:
            raise UsageError(f"{flag}: no password after {user!r}, and standard input is not a terminal "
                             f"to ask for one; give USER:PASS or put the credentials in an auth file")
        password = getpass.getpass(f"Password for {user}: ")
    return Credentials(username=user, password=password, origin=flag)


def _side(args: argparse.Namespace, prefix: str) -> Side:
    dest = prefix.replace("-", "_")
    creds_text = getattr(args, f"{dest}creds", None)
    return Side(
        prefix=prefix,
        creds=parse_creds(creds_text, f"--{prefix}creds") if creds_text else None,
        authfile=getattr(args, f"{dest}authfile", None),
        tls_verify=getattr(args, f"{dest}tls_verify", None),
    )


def _hosts(texts: list[str]) -> list[str]:
    """The registry hosts among references; other transports have no host to configure."""
    hosts: list[str] = []
    for text in texts:
        ref = parse_reference(text)
        if ref.transport == "docker" and ref.host not in hosts:
            hosts.append(ref.host)
    return hosts


def with_sides(args: argparse.Namespace, options: StoreOptions) -> StoreOptions:
    """``options`` with the per-side flags of ``args`` set on the hosts each side names."""
    if hasattr(args, "src_creds"):
        sources = [args.source] if getattr(args, "records", None) is None and args.source else []
        destinations = list(getattr(args, "destinations", []))
        if getattr(args, "records", None) is not None and args.source:
            destinations.insert(0, args.source)  # copy --records: every positional is a destination prefix
        sides = [(_side(args, "src-"), _hosts(sources)), (_side(args, "dest-"), _hosts(destinations))]
    elif hasattr(args, "creds"):
        sides = [(_side(args, ""), _hosts([args.source]))]
    else:
        return options
    return apply_sides(options, sides)


def apply_sides(options: StoreOptions, sides: list[tuple[Side, list[str]]]) -> StoreOptions:
    """Set each side's settings on its hosts; a host both sides configure differently is refused."""
    chosen: dict[str, Side] = {}
    for side, hosts in sides:
        if side.empty:
            continue
        for host in hosts:
            other = chosen.get(host)
            if other is not None:
                for name in ("creds", "authfile", "tls_verify"):
                    mine, theirs = getattr(side, name), getattr(other, name)
                    if name == "creds" and mine is not None and theirs is not None:  # the account, not the flag
                        mine, theirs = (mine.username, mine.password), (theirs.username, theirs.password)
                    if mine is not None and theirs is not None and mine != theirs:
                        flag = name.replace("_", "-")
                        raise UsageError(f"{host} is both source and destination, and {other.flag(flag)} and "
                                         f"{side.flag(flag)} differ: one registry host takes one setting")
                side = Side(side.prefix, side.creds or other.creds, side.authfile or other.authfile,
                            side.tls_verify if side.tls_verify is not None else other.tls_verify)
            chosen[host] = side
    if not chosen:
        return options
    insecure = list(options.insecure_registries)
    insecure += [h for h, s in chosen.items() if s.tls_verify is False and h not in insecure]
    entries = {entry.host: entry for entry in options.hosts}
    for host, side in chosen.items():
        entry = entries.get(host, HostOptions(host))
        if side.creds is not None:
            entry = replace(entry, username=side.creds.username, password=Secret(side.creds.password))
        if side.authfile is not None:
            entry = replace(entry, authfile=side.authfile)
        if side.tls_verify is not None:
            entry = replace(entry, tls_verify=side.tls_verify)
        entries[host] = entry
    return replace(options, insecure_registries=tuple(insecure), hosts=tuple(entries.values()))


def typed_credentials(args: argparse.Namespace) -> bool:
    """Whether credentials were given on the command line (which a distributed job would carry)."""
    return any(getattr(args, name, None) for name in ("src_creds", "dest_creds", "creds"))
