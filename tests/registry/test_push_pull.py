"""Push and pull against a real registry on loopback: what moves, and that it arrives intact."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import structlog
from click.testing import CliRunner

from registry.artifact import sha256_digest
from registry.cli import model
from registry.pull import PullPlan
from registry.push import ModelFiles, pack, push_model
from registry.store import Store
from tests.registry.conftest import make_gguf
from tests.registry.helpers import CHUNK, pull, push, same_file, text_file


async def test_push_then_pull_gives_a_byte_identical_file(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    push(model_ref, gguf_file)
    result = await pull(model_ref, Store(tmp_path / "store"))
    assert same_file(result.weights_path, gguf_file)


async def test_pull_brings_the_ollama_settings_into_the_store(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    template = text_file(tmp_path / "template", "{{ .Prompt }}")
    push(model_ref, gguf_file, template=template)
    store = Store(tmp_path / "store")
    result = await pull(model_ref, store)
    config = store.load_config(result.digest)
    assert config.tandem.ollama.template is not None
    assert store.read_blob(config.tandem.ollama.template) == b"{{ .Prompt }}"


def test_repush_of_the_same_version_uploads_nothing(model_ref, gguf_file: Path) -> None:
    push(model_ref, gguf_file)
    again = push(model_ref, gguf_file)
    assert (again.uploaded_bytes, again.uploaded_blobs, again.tag_written) == (0, 0, False)


def test_push_uploads_only_blobs_the_registry_lacks(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    push(model_ref, gguf_file)
    system = text_file(tmp_path / "system", "You are terse.")
    packed = pack(ModelFiles(gguf_file, system=system), name=model_ref.name, max_chunk=CHUNK)
    second = push(model_ref.with_tag("v2"), gguf_file, system=system)
    # The new system prompt, and the config (it names every layer, so each version has its own).
    assert set(second.uploaded) == {sha256_digest(b"You are terse."), packed.config_digest}


async def test_template_only_update_moves_only_the_template_layer(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    push(model_ref, gguf_file, template=text_file(tmp_path / "t1", "{{ .Prompt }}"))
    await pull(model_ref, store)
    new_template = text_file(tmp_path / "t2", "<|im_start|>{{ .Prompt }}<|im_end|>")
    push(model_ref.with_tag("v2"), gguf_file, template=new_template)
    result = await pull(model_ref.with_tag("v2"), store)
    config = store.load_config(result.digest)
    assert result.downloaded == [config.tandem.ollama.template]
    assert result.bytes_downloaded == new_template.stat().st_size


async def test_one_tensor_update_moves_only_the_chunk_holding_it(model_ref, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    v1 = make_gguf(tmp_path / "v1.gguf")
    v2 = make_gguf(tmp_path / "v2.gguf", changed={"blk.1.attn_q.weight": 0.5})
    push(model_ref, v1)
    await pull(model_ref, store)
    push(model_ref.with_tag("v2"), v2)
    result = await pull(model_ref.with_tag("v2"), store)
    config = store.load_config(result.digest)
    moved = [c for c in config.tandem.chunks if c.digest in result.downloaded]
    assert [(c.first, c.last) for c in moved] == [("blk.1.attn_q.weight", "blk.1.attn_k.weight")]
    assert result.bytes_downloaded == 2 * 256 * 256 * 4  # the tensor and its chunk neighbour
    assert same_file(result.weights_path, v2)


async def test_metadata_update_moves_only_a_small_header_piece(model_ref, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    vocab = [f"token-{i}" for i in range(20_000)]  # a tokenizer array of ~300 KiB, as real models carry
    push(model_ref, make_gguf(tmp_path / "v1.gguf", tokens=vocab))
    await pull(model_ref, store)
    v2 = make_gguf(tmp_path / "v2.gguf", tokens=vocab, metadata={"general.description": "tuned"})
    pushed = push(model_ref.with_tag("v2"), v2)
    result = await pull(model_ref.with_tag("v2"), store)
    config = store.load_config(result.digest)
    kinds = {c.digest: c.kind for c in config.tandem.chunks}
    assert result.downloaded and {kinds[d] for d in result.downloaded} == {"header"}
    assert result.bytes_downloaded < 64 << 10  # the run of small keys (and the padding), not the vocabulary
    config_size = store.load_manifest(result.digest).config.size
    assert pushed.uploaded_bytes - config_size < 64 << 10  # the push moved the same small piece
    assert same_file(result.weights_path, v2)


async def test_second_pull_of_the_same_version_moves_nothing(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    push(model_ref, gguf_file)
    await pull(model_ref, store)
    again = await pull(model_ref, store)
    assert (again.bytes_downloaded, again.layers_reused) == (0, again.layers_total)


async def test_pull_plan_is_reported_before_any_layer_moves(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    push(model_ref, gguf_file)
    layers_present_at_plan: list[bool] = []

    def on_plan(plan: PullPlan) -> None:
        layers_present_at_plan.extend(store.has(b.digest) for b in plan.blobs)

    result = await pull(model_ref, store, on_plan=on_plan)
    assert layers_present_at_plan == [False] * result.layers_total


def test_cli_pull_json_reports_bytes_layers_and_throughput(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    out = CliRunner().invoke(
        model, ["pull", str(model_ref), "--plain-http", "--json", "--store", str(tmp_path / "s")]
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["bytes"]["downloaded"] == summary["bytes"]["total"] == gguf_file.stat().st_size
    assert summary["layers"]["downloaded"] == summary["layers"]["total"]
    assert summary["throughput_bytes_per_s"] > 0


def test_cli_tag_points_a_new_tag_at_the_same_digest(model_ref, gguf_file: Path) -> None:
    pushed = push(model_ref, gguf_file)
    out = CliRunner().invoke(model, ["tag", str(model_ref), "stable", "--plain-http", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["digest"] == pushed.manifest_digest


def test_cli_ls_lists_tags_with_digests(model_ref, gguf_file: Path) -> None:
    pushed = push(model_ref, gguf_file)
    out = CliRunner().invoke(model, ["ls", model_ref.repository_ref, "--plain-http", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["tags"] == [{"tag": "v1", "digest": pushed.manifest_digest}]


def test_cli_inspect_shows_config_and_layers_without_downloading(model_ref, gguf_file: Path) -> None:
    pushed = push(model_ref, gguf_file)
    out = CliRunner().invoke(model, ["inspect", str(model_ref), "--plain-http", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["digest"] == pushed.manifest_digest
    assert shown["config"]["tandem"]["weights"]["size"] == gguf_file.stat().st_size


def test_cli_push_json_reports_uploaded_and_skipped(model_ref, gguf_file: Path) -> None:
    args = [
        "push",
        str(model_ref),
        "--gguf",
        str(gguf_file),
        "--plain-http",
        "--json",
        "--chunk-size",
        "512KiB",
    ]
    first = CliRunner().invoke(model, args)
    second = CliRunner().invoke(model, args)
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert json.loads(second.stdout)["uploaded_bytes"] == 0
    assert json.loads(first.stdout)["digest"] == json.loads(second.stdout)["digest"]


def test_cli_json_stays_clean_whatever_logging_the_process_had(model_ref, gguf_file: Path) -> None:
    # structlog's defaults print to stdout; so does a configuration a library or a test helper
    # leaves behind. `--json` output must still be the only thing on stdout.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    try:
        out = CliRunner().invoke(
            model, ["push", str(model_ref), "--gguf", str(gguf_file), "--plain-http", "--json"]
        )
    finally:
        structlog.reset_defaults()
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["digest"].startswith("sha256:")


async def test_blobs_larger_than_the_upload_chunk_arrive_whole_in_several_patches(
    model_ref, tmp_path: Path
) -> None:
    gguf = make_gguf(tmp_path / "m.gguf", seed=17)
    pushed = push_model(model_ref, ModelFiles(gguf), plain_http=True, max_chunk=CHUNK, upload_chunk=100_000)
    assert pushed.uploaded_blobs > 1
    result = await pull(model_ref, Store(tmp_path / "store"))
    assert same_file(result.weights_path, gguf)
