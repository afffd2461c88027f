"""Parent selection and credit along the lineage: which value function measures the first agent?

With a first agent that makes a second, which makes a third, an agent can be valued by

* its own Upsilon (``own``);
* the best Upsilon in its clade, itself and every descendant (``best_descendant``);
* its clade's productivity: the share of its descendants that the gate admitted, each
  admission being an improvement on its parent with confidence (``productivity``, the mean of
  Beta(1 + admitted, 1 + rejected));
* a lineage credit that discounts the improvements its descendants made by generation:
  ``sum over admitted descendants d of discount^(depth(d) - depth(a)) * (U(d) - U(parent(d)))``
  (``lineage_credit``): with discount 1 the first agent is credited with everything after it,
  with discount 0 with nothing.

Parents are chosen among the admitted agents by a rule (:func:`select_parent`): ``score``,
proportional to Upsilon above the lowest admitted one plus a floor, divided by one plus the
children the agent has already made (so the archive keeps exploring); or ``thompson``,
Thompson sampling on the clade's productivity (the Beta posterior above), which favours
agents whose descendants keep being admitted over agents that merely score well.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from aligned_rl.improve.archive import Node

RULES_OF_CREDIT = ("own", "best_descendant", "productivity", "lineage_credit")


def children_of(nodes: Mapping[str, Node]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {k: [] for k in nodes}
    for node in nodes.values():
        if node.parent is not None and node.parent in out:
            out[node.parent].append(node.id)
    return out


def descendants(nodes: Mapping[str, Node], node_id: str, kids: dict[str, list[str]] | None = None) -> list[tuple[str, int]]:
    """(descendant, generations below ``node_id``) for every descendant, breadth first."""
    kids = kids or children_of(nodes)
    out, frontier = [], [(node_id, 0)]
    while frontier:
        current, depth = frontier.pop(0)
        for child in kids[current]:
            out.append((child, depth + 1))
            frontier.append((child, depth + 1))
    return out


def clade_counts(nodes: Mapping[str, Node], node_id: str, kids=None) -> tuple[int, int]:
    """(admitted, rejected) among the decided descendants of ``node_id``."""
    decided = [nodes[d] for d, _ in descendants(nodes, node_id, kids) if nodes[d].status != "pending"]
    admitted = sum(n.admitted for n in decided)
    return admitted, len(decided) - admitted


def improvement(nodes: Mapping[str, Node], node: Node) -> float:
    """An admitted node's Upsilon minus its parent's, over the archive's environments (0 otherwise)."""
    if not node.admitted or node.parent is None or node.measured is None:
        return 0.0
    return node.upsilon() - nodes[node.parent].upsilon()


def credit(nodes: Mapping[str, Node], discount: float) -> dict[str, dict[str, float]]:
    """Every measured node's value under each rule of :data:`RULES_OF_CREDIT`."""
    kids = children_of(nodes)
    out = {}
    for node in nodes.values():
        if node.measured is None:
            continue
        clade = descendants(nodes, node.id, kids)
        best = max([node.upsilon()] + [nodes[d].upsilon() for d, _ in clade
                                      if nodes[d].admitted and nodes[d].measured is not None])
        admitted, rejected = clade_counts(nodes, node.id, kids)
        out[node.id] = {
            "own": node.upsilon(),
            "best_descendant": best,
            "productivity": (1 + admitted) / (2 + admitted + rejected),
            "lineage_credit": float(sum(discount ** depth * improvement(nodes, nodes[d]) for d, depth in clade)),
            "descendants": len(clade),
            "admitted_descendants": admitted,
        }
    return out


def rankings(table: Mapping[str, Mapping[str, float]], among: list[str]) -> dict[str, list[str]]:
    """The nodes ``among`` ranked best first under each rule (ties broken by node id)."""
    return {rule: sorted(among, key=lambda k: (-table[k][rule], k)) for rule in RULES_OF_CREDIT}


def select_parent(nodes: Mapping[str, Node], rule: str, rng: np.random.Generator, floor: float = 0.05) -> str:
    """A parent among the admitted, measured nodes (see the module docstring)."""
    pool = sorted(k for k, n in nodes.items() if n.admitted and n.measured is not None)
    if not pool:
        raise ValueError("no admitted agent to choose a parent from")
    kids = children_of(nodes)
    if rule == "score":
        scores = np.array([nodes[k].upsilon() for k in pool])
        weights = (scores - scores.min() + floor) / (1.0 + np.array([len(kids[k]) for k in pool]))
        return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
    if rule == "thompson":
        draws = [rng.beta(1 + a, 1 + r) for a, r in (clade_counts(nodes, k, kids) for k in pool)]
        return pool[int(np.argmax(draws))]
    raise ValueError(f"unknown selection rule {rule!r}; use score or thompson")
