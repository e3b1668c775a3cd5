"""Lengths of time as rule authors write them: `30m`, `24h`, `7d`.

The counters' windows (`counters.yaml`) and the tools' ages (`riskgate rules report --since 7d`)
read the same syntax through here: a whole number from 1, no leading zero, then m, h or d.
"""

from __future__ import annotations

import re

_LENGTH = re.compile(r"([1-9][0-9]{0,5})([mhd])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def seconds_of(text: str) -> int | None:
    """The seconds `text` (`30m`, `24h`, `7d`) stands for, or None when it is not one."""
    match = _LENGTH.fullmatch(text)
    return None if match is None else int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
