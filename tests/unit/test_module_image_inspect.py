"""add-module reads every label and the id from one `podman image inspect` (pure parts)."""

from __future__ import annotations

import json

from agent.operations import module_image

INSPECTED = json.dumps(
    [
        {
            "Id": "3f1e" * 16,
            "Labels": {
                "org.nethserver.rootfull": " 1\n",
                "org.nethserver.authorizations": "node:fwadm",
                "empty": "  ",
            },
        }
    ]
)


def test_a_label_reads_as_podmans_format_gives_it() -> None:
    assert module_image.raw_label(INSPECTED, "org.nethserver.rootfull") == "1"
    assert module_image.raw_label(INSPECTED, "org.nethserver.authorizations") == "node:fwadm"
    assert module_image.raw_label(INSPECTED, "empty") is None
    assert module_image.raw_label(INSPECTED, "missing") is None


def test_odd_inspect_output_gives_no_label_and_no_id() -> None:
    for text in ("", "{}", "[]", "[1]", '[{"Labels": null, "Id": 7}]', '[{"Id": "a/b"}]'):
        assert module_image.raw_label(text, "org.nethserver.rootfull") is None
        assert module_image.image_id_of(text) is None


def test_the_image_id() -> None:
    assert module_image.image_id_of(INSPECTED) == "3f1e" * 16
