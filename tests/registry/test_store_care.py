"""Keeping an edge's store honest and small: `tandem model verify` and `tandem model gc`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from registry.cli import model
from registry.reference import Reference
from registry.store import Store
from tests.registry.conftest import make_gguf
from tests.registry.helpers import push


def cli(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(model, list(args))
    return out.exit_code, out.stdout


def pull_cli(ref: Reference, store: Path) -> dict[str, object]:
    code, stdout = cli("pull", str(ref), "--plain-http", "--json", "--store", str(store))
    assert code == 0, stdout
    result: dict[str, object] = json.loads(stdout)
    return result


def test_gc_keeps_the_current_and_previous_versions_and_frees_the_rest(
    model_ref: Reference, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    digests = []
    for i in range(3):  # each version changes one tensor: each has a chunk of its own
        gguf = make_gguf(tmp_path / f"v{i}.gguf", changed={"blk.1.attn_q.weight": float(i)})
        ref = model_ref.with_tag(f"v{i}")
        push(ref, gguf)
        digests.append(pull_cli(ref, store_dir)["digest"])
    store = Store(store_dir)
    only_v0 = (
        store.referenced(str(digests[0]))
        - store.referenced(str(digests[1]))
        - store.referenced(str(digests[2]))
    )
    assert only_v0 and all(store.has(d) or store.file_path(d).exists() for d in only_v0)
    code, stdout = cli("gc", "--store", str(store_dir), "--json")
    assert code == 0, stdout
    report = json.loads(stdout)
    assert set(report["kept"]) == {digests[1], digests[2]} and report["freed_bytes"] > 0
    assert not any(store.has(d) or store.file_path(d).exists() for d in only_v0)
    for digest in digests[1:]:  # both kept versions are whole: blobs and reassembled file
        assert all(store.has(d) or store.file_path(d).exists() for d in store.referenced(str(digest)))


def test_verify_exits_4_naming_damage_and_the_next_pull_repairs_it(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    push(model_ref, gguf_file)
    pulled = pull_cli(model_ref, store_dir)
    code, stdout = cli("verify", "--store", str(store_dir), "--json")
    assert (code, json.loads(stdout)["problems"]) == (0, [])
    weights = Path(str(pulled["weights"]))
    with weights.open("r+b") as f:  # same size, altered in place
        f.seek(4096)
        f.write(b"\xff" * 8)
    code, stdout = cli("verify", "--store", str(store_dir), "--json")
    error = json.loads(stdout)
    assert code == 4 and error["kind"] == "DigestMismatch" and weights.name[:12] in error["error"]
    assert not weights.exists()
    again = pull_cli(model_ref, store_dir)
    assert again["bytes"]["downloaded"] == 0  # type: ignore[index]  # rebuilt from the chunks, none fetched
    assert weights.read_bytes() == gguf_file.read_bytes()
