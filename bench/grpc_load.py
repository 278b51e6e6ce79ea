"""A gRPC load generator for `tandem.v1.Gateway/Chat` (grpc.aio), and a do-nothing server that
shows how fast the generator itself goes.

    python -m bench.grpc_load run 127.0.0.1:50051 --model qwen3 -c 64 -d 5
    python -m bench.grpc_load serve --port 0 --tokens 16     # prints `listening on grpc://HOST:PORT`

One channel (HTTP/2 multiplexes the calls), N concurrent workers, each calling `Chat` and
reading the stream to its end. Per call it records latency (call to the last message), and
time to first token (the first chunk with answer or reasoning text). It returns the same
`LoadResult` as `bench.loadgen`, so both faces are reported alike. Run it in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc

from bench.loadgen import LoadResult
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc as pb_grpc

PROMPT = "Say hello to the line-3 team."


@dataclass(slots=True)
class GrpcSpec:
    """What to call, how hard, and for how long (a request count, a duration, or both)."""

    target: str  # host:port
    model: str = "qwen3"
    prompt: str = PROMPT
    metadata: tuple[tuple[str, str], ...] = ()  # e.g. (("authorization", "Bearer <key>"),)
    concurrency: int = 1
    requests: int | None = None
    duration: float | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("GrpcSpec needs requests or duration (or both)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")

    def request(self) -> pb.ChatRequest:
        return pb.ChatRequest(model=self.model, messages=[pb.Message(role=pb.ROLE_USER, content=self.prompt)])


class _Run:
    def __init__(self, spec: GrpcSpec, stub: pb_grpc.GatewayStub) -> None:
        self.spec = spec
        self.stub = stub
        self.request = spec.request()
        self.started = 0
        self.limit: int | None = None
        self.deadline = float("inf")

    async def one(self, result: LoadResult) -> None:
        t0 = time.perf_counter()
        first_message: float | None = None
        first_token: float | None = None
        received = 0
        try:
            call = self.stub.Chat(
                self.request, timeout=self.spec.timeout, metadata=self.spec.metadata or None
            )
            async for chunk in call:
                received += chunk.ByteSize()
                if first_message is None:
                    first_message = time.perf_counter()
                if first_token is None and (chunk.content or chunk.reasoning):
                    first_token = time.perf_counter()
        except grpc.aio.AioRpcError as exc:
            result.errors += 1
            result.statuses[int(exc.code().value[0])] += 1  # gRPC status codes here (0 is OK)
            return
        end = time.perf_counter()
        result.statuses[0] += 1
        result.bytes_received += received
        result.latencies.append(end - t0)
        if first_message is not None:
            result.ttfb.append(first_message - t0)
        if first_token is not None:
            result.ttft.append(first_token - t0)

    async def worker(self, result: LoadResult) -> None:
        while time.perf_counter() < self.deadline and (self.limit is None or self.started < self.limit):
            self.started += 1
            await self.one(result)

    async def phase(self, result: LoadResult, limit: int | None, duration: float | None) -> None:
        self.started = 0
        self.limit = limit
        self.deadline = time.perf_counter() + duration if duration is not None else float("inf")
        workers = [asyncio.create_task(self.worker(result)) for _ in range(self.spec.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])


async def run_grpc_load(
    spec: GrpcSpec, chan: grpc.aio.Channel | None = None, *, warmup_s: float = 0.0
) -> LoadResult:
    """Runs the load described by `spec` (after `warmup_s` seconds not measured)."""
    async with contextlib.AsyncExitStack() as stack:
        opened: grpc.aio.Channel = chan or await stack.enter_async_context(channel(spec.target))
        await asyncio.wait_for(opened.channel_ready(), timeout=spec.timeout)
        run = _Run(spec, pb_grpc.GatewayStub(opened))
        if warmup_s > 0:
            await run.phase(LoadResult(elapsed=0.0), None, warmup_s)
        result = LoadResult(elapsed=0.0)
        start = time.perf_counter()
        await run.phase(result, spec.requests, spec.duration)
        result.elapsed = time.perf_counter() - start
        return result


# --- the do-nothing server ------------------------------------------------------------------------


class NullGateway(pb_grpc.GatewayServicer):
    """Answers every `Chat` with prepared chunks: at once (the load generator's own ceiling), or
    one every 1/`rate` seconds (the floor under any gRPC server streaming at an engine's pace)."""

    def __init__(self, tokens: int, chunks: int, rate: float = 0.0) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        words = ["tok"] * tokens
        per = max(1, -(-tokens // max(1, chunks)))
        self.chunks = [
            pb.ChatChunk(id="null", model="null", content=" ".join(words[i : i + per]))
            for i in range(0, tokens, per)
        ]
        self.last = pb.ChatChunk(id="null", model="null", finish_reason="stop")

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        for chunk in self.chunks:
            if self.interval:
                await asyncio.sleep(self.interval)
            yield chunk
        yield self.last


class RelayGateway(pb_grpc.GatewayServicer):
    """A do-nothing gRPC relay: each `Chat` POSTs a fixed streamed request to an OpenAI-compatible
    upstream and sends every network read of its body on as one message, unparsed. The floor
    under any gRPC face in front of an HTTP engine: one upstream read and one gRPC write per
    token at an engine's pace, and nothing else."""

    def __init__(self, upstream: str, model: str) -> None:
        self.url = upstream.rstrip("/") + "/v1/chat/completions"
        self.body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        self.session: aiohttp.ClientSession | None = None

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with self.session.post(self.url, json=self.body) as up:
            async for data in up.content.iter_any():
                yield pb.ChatChunk(id="relay", content=data.decode("utf-8", "replace"))
        yield pb.ChatChunk(id="relay", finish_reason="stop")


async def serve_null(
    host: str, port: int, tokens: int, chunks: int, rate: float = 0.0, upstream: str | None = None
) -> None:
    server = grpc.aio.server()
    servicer = RelayGateway(upstream, "Qwen/Qwen3-14B") if upstream else NullGateway(tokens, chunks, rate)
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"null gateway: listening on grpc://{host}:{bound}", flush=True)
    await server.wait_for_termination()


def _loop_run(coro: object) -> object:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="call Chat under load and print a JSON summary")
    run.add_argument("target", help="host:port")
    run.add_argument("--model", default="qwen3")
    run.add_argument("--prompt", default=PROMPT)
    run.add_argument("--api-key", help="sent as `authorization: Bearer <key>` metadata")
    run.add_argument("--concurrency", "-c", type=int, default=1)
    run.add_argument("--requests", "-n", type=int)
    run.add_argument("--duration", "-d", type=float)
    run.add_argument("--warmup", type=float, default=0.0, help="seconds of calls before measuring")
    serve = sub.add_parser("serve", help="run the do-nothing Gateway server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--tokens", type=int, default=16)
    serve.add_argument("--chunks", type=int, default=1, help="messages the tokens are sent in")
    serve.add_argument("--rate", type=float, default=0.0, help="messages per second per call (0: at once)")
    serve.add_argument("--upstream", help="relay each call from this vLLM-compatible base URL instead")
    args = parser.parse_args(argv)
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            _loop_run(serve_null(args.host, args.port, args.tokens, args.chunks, args.rate, args.upstream))
        return
    spec = GrpcSpec(
        target=args.target,
        model=args.model,
        prompt=args.prompt,
        metadata=(("authorization", f"Bearer {args.api_key}"),) if args.api_key else (),
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration if args.duration or args.requests else 5.0,
    )
    result = _loop_run(run_grpc_load(spec, warmup_s=args.warmup))
    assert isinstance(result, LoadResult)
    json.dump(result.summary(), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
