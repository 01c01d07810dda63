"""Which calling AE titles may do what: the peer table and the demo default loopback rule.

Shared by the DICOM services and by whatever must know in advance what they will allow (a
migration checks that the legacy PACS may store into us before it starts)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from storage.settings import Settings


class Action(StrEnum):
    ECHO = "echo"
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class PeerPolicy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def decide(self, calling_ae: str, address: str, action: Action) -> Decision:
        ae = calling_ae.strip()
        peer = self.settings.peer(ae)
        if peer is None:
            if self.settings.open_to_loopback and is_loopback(address):
                return Decision(True)
            return Decision(False, f"calling AE title {ae!r} is not a configured peer")
        if action is Action.ECHO:
            return Decision(True)
        if not getattr(peer, action.value):
            return Decision(False, f"peer {ae!r} is not allowed to {action.value}")
        return Decision(True)

    def admits(self, calling_ae: str, address: str) -> bool:
        """Whether the caller may do anything at all, and so may associate."""
        return any(self.decide(calling_ae, address, action).allowed for action in Action)

    def required_calling_aets(self) -> list[str]:
        """AE titles for association-level rejection; empty when loopback callers may be unknown."""
        if self.settings.open_to_loopback:
            return []
        return [p.ae for p in self.settings.peers]
