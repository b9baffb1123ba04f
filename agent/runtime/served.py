"""Comparing the answer a model server gave with the one the agent recomputes from the bundle.

Why: the agent scores the bundle's copy of the model, not the server's. If the two disagree, the
server runs another model version than the bundle (a rollout the bundle missed, a canary), and
every credibility the agent reports is about the wrong model. So wherever an event says what the
server answered — a v1 event's `prediction.label`, an inference response sharing its request's id
(OIP v2 `id`, KServe's `ce_id`) — the two are compared, and a mismatch is counted
(`dknn_served_answer_mismatches_total`).

A response may arrive before or after its request, in another batch, even in another partition
(whoever keyed the records). Both sides wait here, bounded: the oldest are forgotten first, and
counted as unmatched, when more than `capacity` requests are waiting (a response whose request
went to another replica of the group stays unmatched: the comparison is per replica).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from agent.runtime.events import ServedAnswers

DEFAULT_CAPACITY = 100_000


@dataclass
class Comparisons:
    """What one batch added: answers compared, mismatches among them, and entries forgotten unmatched."""

    compared: int = 0
    mismatched: int = 0
    unmatched: int = 0

    def add(self, served: int, recomputed: int) -> None:
        self.compared += 1
        self.mismatched += served != recomputed


@dataclass
class ServedAnswerCheck:
    """Joins served answers with recomputed ones by request id and row."""

    capacity: int = DEFAULT_CAPACITY
    _recomputed: OrderedDict[str, dict[int, int]] = field(default_factory=OrderedDict)
    _served: OrderedDict[str, dict[int, int]] = field(default_factory=OrderedDict)  # rows not yet compared

    def recomputed(self, request_id: str, row: int, label: int, into: Comparisons) -> None:
        """The agent's answer for one input of a request."""
        served = self._served.get(request_id)
        if served is not None:
            if row in served:
                into.add(served.pop(row), label)
            if not served:
                del self._served[request_id]
            return
        self._recomputed.setdefault(request_id, {})[row] = label
        self._recomputed.move_to_end(request_id)
        self._bound(self._recomputed, into)

    def served(self, answers: ServedAnswers, into: Comparisons) -> None:
        """A response: compared with every input of its request seen so far, or kept for later ones."""
        waiting = self._recomputed.pop(answers.request_id, None)
        if waiting is not None:
            for row, label in waiting.items():
                if row < len(answers.labels):
                    into.add(answers.labels[row], label)
            return
        self._served[answers.request_id] = dict(enumerate(answers.labels))
        self._served.move_to_end(answers.request_id)
        self._bound(self._served, into)

    def _bound(self, waiting: OrderedDict[str, dict[int, int]], into: Comparisons) -> None:
        while len(waiting) > self.capacity:
            waiting.popitem(last=False)
            into.unmatched += 1
