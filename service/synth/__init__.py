"""Synthetic traffic: a seeded population, its daily rhythm and planted fraud, as ScreenRequests.

`generate` yields ``(ScreenRequest, Label | None)`` pairs in ``occurred_at`` order, one at a time;
``riskgate synth`` (`add_synth_command`) writes the requests as the JSON Lines ``riskgate screen``
reads and the labels of the planted events to a side file. The same seed, clock and options give
the same stream, byte for byte. The modules, from the ground up:

* `tables`: the static reference data: provinces and migration, county codes, ages, banks,
  carriers, names, streets, currencies abroad;
* `population`: people, their accounts, phones and devices, derived on demand from the seed; the
  company payees (`corporate_accounts`);
* `rhythm`: when events happen: the share of each kind (`EVENT_SHARES`), the shape of the day in
  China time, the times of a stream's slots;
* `requests`: the outlets and requests every event is built from;
* `ordinary`: the ordinary events;
* `patterns`: the six planted fraud patterns (`PATTERNS`, `PATTERN_RATES`) and when they start;
* `stream`: the window and the generator interleaving ordinary and planted events (`generate`);
* `command`: the ``riskgate synth`` command: its options, output and summary.
"""

from service.synth.command import add_synth_command, label_json_line, to_json_line
from service.synth.patterns import PATTERN_RATES, PATTERNS
from service.synth.population import corporate_accounts
from service.synth.rhythm import EVENT_SHARES
from service.synth.stream import MAX_DEFAULT_AGE, Label, Labelled, generate, stream_window, valid_until

__all__ = [
    "EVENT_SHARES",
    "MAX_DEFAULT_AGE",
    "PATTERNS",
    "PATTERN_RATES",
    "Label",
    "Labelled",
    "add_synth_command",
    "corporate_accounts",
    "generate",
    "label_json_line",
    "stream_window",
    "to_json_line",
    "valid_until",
]
