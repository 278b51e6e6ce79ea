"""Model distribution: versions of a model as layered OCI artifacts.

`artifact` (format and validation), `gguf_chunks` / `cdc` / `chunking` (cutting the weights),
`store` (the local content-addressed store), `push` / `pull` (transfers: `download` moves the
layers, `assembly` rebuilds and verifies the weights file), `signature` (model-signing),
`auth`, `ollama_register` (the edge's Ollama), `cli` (`tandem model`). Nothing here imports
the gateway or the edge agent; `edge_agent.model_sync` builds on it.
"""
