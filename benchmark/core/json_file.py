"""Reading a JSON document a person may hand the suite (a genotype, a search record): a missing
or unreadable file is a one-line ``UsageError`` that names what the file was meant to be."""
from __future__ import annotations

import json
from pathlib import Path

from benchmark.core.errors import UsageError


def read_json(path, what: str):
    """The parsed contents of ``path``; ``what`` names it in the errors ("genotype file")."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{what} {path} is not readable JSON: {e}") from None
