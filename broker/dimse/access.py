"""Which calling AE titles may do what: the peer table and the demo default loopback rule."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from pynetdicom import evt
from pynetdicom.events import Event

from storage.settings import Settings

# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


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


class AccessPolicy:
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

    def screen_association(self, event: Event) -> None:
        """EVT_REQUESTED handler: reject callers that every service would refuse."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = request.calling_ae_title if request is not None else ""
        if not self.admits(calling, assoc.requestor.address):
            assoc.acse.send_reject(*CALLING_AE_NOT_RECOGNISED)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def required_calling_aets(self) -> list[str]:
        """AE titles for association-level rejection; empty when loopback callers may be unknown."""
        if self.settings.open_to_loopback:
            return []
        return [p.ae for p in self.settings.peers]
