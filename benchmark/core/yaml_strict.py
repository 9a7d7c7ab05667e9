"""YAML for files people write by hand: ``yaml.safe_load`` that refuses a repeated key.

PyYAML keeps the last of two equal keys of a mapping without a word, so a config holding
``epochs: 50`` twice (an edit pasted below the old value) runs with whichever came last. Here a
repeated key is a ``DuplicateKeyError`` (a ``yaml.YAMLError``, one line naming the key and both
lines), so every caller that already reports invalid YAML reports this too. Merge keys (``<<``)
still override as YAML defines. Used for run configs (``benchmark.run.config``); meant for every
hand-written YAML file (protocols too).
"""
from __future__ import annotations

import yaml

__all__ = ["DuplicateKeyError", "StrictSafeLoader", "strict_safe_load"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice."""


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no object construction) that refuses duplicate mapping keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue        # an unhashable key: SafeLoader's own error follows
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise DuplicateKeyError(f"duplicate key {key!r} on line {line} (first on line "
                                            f"{first_line[key]}): remove one of them")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def strict_safe_load(text: str):
    """``yaml.safe_load`` that raises ``DuplicateKeyError`` for a repeated mapping key."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
