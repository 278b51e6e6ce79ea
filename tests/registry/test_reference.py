from __future__ import annotations

import pytest

from registry.errors import BadReference
from registry.reference import parse_reference


def test_reference_with_port_and_tag_parses() -> None:
    ref = parse_reference("registry.local:5000/models/qwen3:14b-q4")
    assert (ref.registry, ref.repository, ref.tag, ref.name) == (
        "registry.local:5000",
        "models/qwen3",
        "14b-q4",
        "qwen3",
    )


def test_reference_without_tag_is_refused_with_a_hint() -> None:
    with pytest.raises(BadReference, match=r"no tag.*localhost/models/qwen3:latest"):
        parse_reference("localhost/models/qwen3")
    assert parse_reference("localhost/models/qwen3:latest").target == "latest"


def test_reference_pinned_by_digest_targets_the_digest() -> None:
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"127.0.0.1:5000/models/qwen3:v1@{digest}").target == digest


def test_bare_repository_has_no_tag_when_listing() -> None:
    assert parse_reference("127.0.0.1:5000/models/qwen3", allow_bare=True).tag is None


@pytest.mark.parametrize(
    "text",
    [
        "qwen3:14b",
        "models/qwen3:14b",
        "registry.local/Models/qwen3",
        "registry.local/models/qwen3:bad/tag",
        "registry.local/models/../x",
        "registry.local/models/qwen3@sha256:xyz",
        "",
    ],
)
def test_malformed_reference_is_rejected_with_a_reason(text: str) -> None:
    with pytest.raises(BadReference):
        parse_reference(text)
