"""The peer policy at association time: callers that every service would refuse are rejected
before any negotiation."""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.events import Event

from storage.access import Action, PeerPolicy

__all__ = ["AccessPolicy", "Action"]

# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


class AccessPolicy(PeerPolicy):
    def screen_association(self, event: Event) -> None:
        """EVT_REQUESTED handler: reject callers that every service would refuse."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = request.calling_ae_title if request is not None else ""
        if not self.admits(calling, assoc.requestor.address):
            assoc.acse.send_reject(*CALLING_AE_NOT_RECOGNISED)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
