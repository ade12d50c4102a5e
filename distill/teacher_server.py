"""A local teacher behind an OpenAI-compatible API: ``python -m reference.teacher_server --model DIR-or-config``.

It serves a Hugging Face causal LM's top-k log-probabilities over the subset of ``/v1/completions`` that
teachers are scored through (the same subset vLLM serves):

- ``prompt``: token ids (``[int]`` or ``[[int], ...]``) or text; ``echo``: true returns the prompt's positions;
  ``max_tokens``: 0 or 1 (one greedy token); ``logprobs``: K, the top-K alternatives per position under
  ``choices[i].logprobs.top_logprobs`` (the first prompt position is null: nothing precedes it);
- vLLM's extensions ``prompt_logprobs``: K (``choices[i].prompt_logprobs``, first entry null, then one
  ``{id: {logprob, rank, decoded_token}}`` per position) and ``return_tokens_as_token_ids`` (tokens spelled
  ``token_id:N``).

Like vLLM, each position's alternatives hold the top K plus the prompt's own token when it is not among them.
``GET /v1/models``, ``GET /health``, ``POST /tokenize`` and ``POST /detokenize`` (vLLM's) complete the surface;
``GET /stats`` counts the completions answered and the faults injected.

Faults can be injected for load tests (``--faults drop=0.02,error=0.05,throttle=0.02,stall=0.01``): a
dropped connection mid-answer, a 500, a 429, or a stall of ``--stall-seconds`` before answering.
"""

import argparse
import asyncio
import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distill.teachers.tokens import TOKEN_ID_PREFIX, TokenVocab, load_vocab


class ServerError(ValueError):
    """A request the server refuses: answered with HTTP 400 and the message."""


def load_model(spec: str, seed: int = 0):
    """A Hugging Face causal LM from a local folder (safetensors) or built from a config JSON with seeded
    initialization. Nothing is downloaded."""
    path = Path(spec)
    config_dict = None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {spec}: the folder has no config.json; pass a model folder or a config JSON")
    elif path.is_file():
        try:
            config_dict = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--model {spec}: not a JSON config ({str(exc).splitlines()[0]})") from None
        if not isinstance(config_dict, dict) or "model_type" not in config_dict:
            raise ValueError(f"--model {spec}: a config JSON needs a 'model_type' (e.g. \"llama\")")
    else:
        raise ValueError(f"--model {spec}: no such folder or file")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if config_dict is None:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    else:
        config_dict = dict(config_dict)
        model_type = config_dict.pop("model_type")
        try:
            config = AutoConfig.for_model(model_type, **config_dict)
        except ValueError as exc:
            raise ValueError(f"--model {spec}: {str(exc).splitlines()[0]}") from None
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.float().eval()


@dataclass
class ScoringModel:
    """A causal LM and its vocabulary, scored one sequence at a time under a lock."""

    model: object
    vocab: TokenVocab
    name: str = "teacher"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def logprobs(self, ids: list[int]):
        """Log-probabilities ``[n, V]`` (float32): row j is the distribution of token j+1 given tokens 0..j."""
        import torch

        with self._lock, torch.no_grad():
            logits = self.model(torch.tensor([ids], dtype=torch.long)).logits[0]
            return torch.log_softmax(logits.float(), dim=-1)


@dataclass
class FaultPlan:
    """Per-request fault probabilities for ``/v1/completions`` (drawn from one seeded stream)."""

    drop: float = 0.0
    error: float = 0.0
    throttle: float = 0.0
    stall: float = 0.0
    stall_seconds: float = 5.0
    seed: int = 0
    injected: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        total = self.drop + self.error + self.throttle + self.stall
        if min(self.drop, self.error, self.throttle, self.stall) < 0 or total > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, got total {total}")

    @classmethod
    def parse(cls, text: str, stall_seconds: float = 5.0, seed: int = 0) -> "FaultPlan":
        rates = {}
        for item in filter(None, text.split(",")):
            name, _, value = item.partition("=")
            if name not in ("drop", "error", "throttle", "stall"):
                raise ValueError(f"--faults: unknown fault {name!r}; use drop, error, throttle, stall (e.g. drop=0.02)")
            try:
                rates[name] = float(value)
            except ValueError:
                raise ValueError(f"--faults: {item!r} needs a rate, e.g. {name}=0.05") from None
        return cls(**rates, stall_seconds=stall_seconds, seed=seed)

    def draw(self) -> str | None:
        u = self._rng.random()
        for name in ("drop", "error", "throttle", "stall"):
            rate = getattr(self, name)
            if u < rate:
                self.injected[name] += 1
                return name
            u -= rate
        return None


class FaultInjector:
    """ASGI middleware that injects the faults of a :class:`FaultPlan` into ``POST /v1/completions``."""

    def __init__(self, app, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/completions":
            return await self.app(scope, receive, send)
        fault = self.plan.draw()
        if fault == "stall":
            await asyncio.sleep(self.plan.stall_seconds)
        elif fault in ("error", "throttle"):
            status = 500 if fault == "error" else 429
            body = json.dumps({"error": {"message": f"injected fault: {fault}", "type": "server_error"}}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if fault == "throttle":
                headers.append((b"retry-after", b"0"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        elif fault == "drop":
            # Promise a body, send part of it, then abort: the server closes the connection mid-answer.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")]})
            await send({"type": "http.response.body", "body": b'{"choices": [', "more_body": True})
            raise ConnectionAbortedError("injected fault: dropped connection")
        return await self.app(scope, receive, send)


def _spell(vocab: TokenVocab, token_id: int, as_ids: bool) -> str:
    """``token_id:N`` when asked, and for padded embedding rows past the tokenizer's ids; else the token's
    spelling in the vocabulary."""
    return f"{TOKEN_ID_PREFIX}{token_id}" if as_ids or token_id >= vocab.vocab_size else vocab.id_to_token(token_id)


def _int_field(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ServerError(f"'{name}' must be an integer in [{low}, {high}], got {value!r}")
    return value


def _prompts(body: dict, scoring: ScoringModel) -> list[list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [scoring.vocab.encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (list, str)) for p in prompt):
        prompts = [scoring.vocab.encode(p) if isinstance(p, str) else p for p in prompt]
    else:
        raise ServerError("'prompt' must be text, a list of token ids, or a list of those")
    for i, ids in enumerate(prompts):
        if not ids:
            raise ServerError(f"prompt {i} is empty")
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < scoring.vocab_size]
        if bad:
            raise ServerError(f"prompt {i}: token id {bad[0]!r} is outside the vocabulary [0, {scoring.vocab_size})")
    return prompts


def complete(scoring: ScoringModel, body: dict, max_logprobs: int) -> dict:
    """Answer one ``/v1/completions`` request body (a dict) with the response dict."""
    import torch

    if not isinstance(body, dict):
        raise ServerError("the request body must be a JSON object")
    model_name = body.get("model", scoring.name)
    if model_name != scoring.name:
        raise ServerError(f"model {model_name!r} is not served here; this server serves {scoring.name!r}")
    prompts = _prompts(body, scoring)
    echo = bool(body.get("echo", False))
    max_tokens = _int_field(body, "max_tokens", 1, 0, 1)
    k = _int_field(body, "logprobs", None, 0, max_logprobs)
    k_prompt = _int_field(body, "prompt_logprobs", None, 0, max_logprobs)
    as_ids = bool(body.get("return_tokens_as_token_ids", False))
    if max_tokens == 0 and not echo:
        raise ServerError("max_tokens=0 needs echo=true: there is nothing else to return")

    choices, completion_tokens = [], 0
    for index, ids in enumerate(prompts):
        rows = scoring.logprobs(ids)  # [n, V]; row j is the distribution of token j+1
        generated = [int(rows[-1].argmax())] if max_tokens == 1 else []
        completion_tokens += len(generated)
        tokens = (ids if echo else []) + generated
        choice = {"index": index, "text": scoring.vocab.decode(tokens), "finish_reason": "length",
                  "logprobs": None}
        # Row j predicts token j+1 of ids + generated: its log-prob, and the top alternatives of every row.
        targets = torch.tensor(ids[1:] + generated, dtype=torch.long)
        scored = rows[: len(targets)]
        target_lp = scored.gather(1, targets[:, None])[:, 0]
        widest = max(k or 0, k_prompt or 0)
        top_values, top_ids = torch.topk(scored, widest, dim=-1) if widest else (scored[:, :0], targets[:, None, :0])
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
        target_list, target_lp_list = targets.tolist(), target_lp.tolist()

        def alternatives(j: int, width: int) -> dict[int, float]:
            """Row j's top `width` alternatives, plus its target token when that is not among them (as vLLM)."""
            entries = dict(zip(top_ids[j][:width], top_values[j][:width]))  # noqa: B023 (used within the loop)
            entries.setdefault(target_list[j], target_lp_list[j])  # noqa: B023
            return entries

        if k is not None:
            # Position p of `tokens` is predicted by row p-1 (echo), and the generated token by the last row.
            predicted_by = ([None, *range(len(ids) - 1)] if echo else []) + ([len(ids) - 1] if generated else [])
            token_logprobs, top_logprobs, offsets, offset = [], [], [], 0
            for token, j in zip(tokens, predicted_by):
                offsets.append(offset)
                offset += len(scoring.vocab.decode([token]))
                if j is None:
                    token_logprobs.append(None)
                    top_logprobs.append(None)
                    continue
                token_logprobs.append(target_lp_list[j])
                top_logprobs.append({_spell(scoring.vocab, t, as_ids): v
                                     for t, v in alternatives(j, k).items()})
            choice["logprobs"] = {"tokens": [_spell(scoring.vocab, t, as_ids) for t in tokens],
                                  "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                                  "text_offset": offsets}
        if k_prompt is not None:
            prompt_logprobs = [None]
            for j in range(len(ids) - 1):
                entries = alternatives(j, k_prompt)
                values = torch.tensor(list(entries.values()))
                ranks = ((scored[j][None, :] > values[:, None]).sum(-1) + 1).tolist()
                prompt_logprobs.append({str(t): {"logprob": v, "rank": r, "decoded_token": _spell(scoring.vocab, t,
                                                                                                   as_ids)}
                                        for (t, v), r in zip(entries.items(), ranks)})
            choice["prompt_logprobs"] = prompt_logprobs
        choices.append(choice)
    prompt_tokens = sum(map(len, prompts))
    return {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
            "model": scoring.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def create_app(scoring: ScoringModel, *, max_logprobs: int = 20, faults: FaultPlan | None = None):
    """The FastAPI application (wrapped in the fault injector when ``faults`` is given)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="kd-contracts teacher server")
    app.state.requests = Counter()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

    async def json_body(request: Request):
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServerError("the request body is not valid JSON") from None

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return {"completions": app.state.requests["completions"],
                "faults_injected": dict(faults.injected) if faults is not None else {}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": scoring.name, "object": "model", "owned_by": "kd-contracts",
                                            "max_model_len": getattr(scoring.model.config, "max_position_embeddings",
                                                                     None)}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        try:
            body = await json_body(request)
            prompt = body.get("prompt") if isinstance(body, dict) else None
            if not isinstance(prompt, str):
                raise ServerError("'prompt' must be text")
        except ServerError as exc:
            return error(400, str(exc))
        ids = scoring.vocab.encode(prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        try:
            body = await json_body(request)
            ids = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise ServerError("'tokens' must be a list of token ids")
        except ServerError as exc:
            return error(400, str(exc))
        return {"prompt": scoring.vocab.decode(ids)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        app.state.requests["completions"] += 1
        try:
            body = await json_body(request)
            return await run_in_threadpool(complete, scoring, body, max_logprobs)
        except ServerError as exc:
            return error(400, str(exc))

    return FaultInjector(app, faults) if faults is not None else app


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", log_level: str = "critical") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread on a free port of ``host``; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the teacher server did not start within 30 s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reference.teacher_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder, or a config JSON")
    parser.add_argument("--tokenizer", default=None,
                        help="'bytes' (byte-level), a tokenizer.json, or a folder holding one "
                             "(default: the model folder's tokenizer.json, else bytes)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="teacher", help="the model name served (default: teacher)")
    parser.add_argument("--seed", type=int, default=0, help="initialization seed for a model built from config")
    parser.add_argument("--max-logprobs", type=int, default=20, help="the largest K a request may ask for")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--faults", default="", help="fault rates for load tests, e.g. drop=0.02,error=0.05")
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--log-level", default="warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port {args.port}: a port is in [0, 65535]")
        if args.max_logprobs < 1:
            raise ValueError(f"--max-logprobs {args.max_logprobs}: must be >= 1")
        faults = FaultPlan.parse(args.faults, args.stall_seconds, args.fault_seed) if args.faults else None
        model = load_model(args.model, args.seed)
        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer = args.model if (Path(args.model) / "tokenizer.json").is_file() else "bytes"
        vocab = load_vocab(tokenizer, vocab_size=model.config.vocab_size)
        if vocab.vocab_size > model.config.vocab_size:
            raise ValueError(f"--tokenizer {tokenizer}: {vocab.vocab_size} tokens, more than the model's "
                             f"vocab_size {model.config.vocab_size}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import uvicorn

    app = create_app(ScoringModel(model, vocab, args.name), max_logprobs=args.max_logprobs, faults=faults)
    print(f"serving {args.model} as {args.name!r} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
