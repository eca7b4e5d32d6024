"""Every family of entities, listed once: the state, the snapshot and both screens
take the list from here. A new family is a module beside these and one line below.

The order is the order of the dashboards' panels.
"""

from __future__ import annotations

from collectors.families.base import Family, first_fact, key_chain
from collectors.families.keys import Keys
from collectors.families.locks import Locks
from collectors.families.marks import Marks
from collectors.families.messages import Messages
from collectors.families.nodes import Nodes
from collectors.families.prefixes import Prefixes
from collectors.families.queues import Queues
from collectors.families.rings import Rings
from collectors.families.runs import Runs
from collectors.families.services import Services
from collectors.families.sessions import Sessions
from collectors.families.transactions import Transactions
from collectors.layouts import LayoutConfig
from collectors.layouts.facts import Fact
from collectors.records import KeyRecord

__all__ = ["FAMILIES", "KINDS", "PLURAL", "REGISTRY", "Family", "recognise_key"]

REGISTRY: tuple[type[Family], ...] = (
    Nodes,
    Locks,
    Sessions,
    Marks,
    Transactions,
    Messages,
    Queues,
    Rings,
    Services,
    Keys,
    Prefixes,
    Runs,
)

FAMILIES: dict[str, type[Family]] = {f.kind: f for f in REGISTRY}
"""kind -> family"""
KINDS: dict[str, type] = {f.kind: f.entity for f in REGISTRY}
"""kind -> entity class"""
PLURAL: dict[str, str] = {f.kind: f.plural for f in REGISTRY}
"""kind -> the name of its list in a snapshot (``lock`` -> ``locks``)"""

_CHAIN = key_chain(REGISTRY)
_DEFAULTS = LayoutConfig()


def recognise_key(rec: KeyRecord, config: LayoutConfig = _DEFAULTS) -> Fact | None:
    """What the families' recognisers say this key is (the first that claims it)."""
    return first_fact(_CHAIN, rec, config)
