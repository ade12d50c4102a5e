"""The API teacher against the local teacher server on 127.0.0.1, and the corpus of malformed payloads."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from distill.teacher_server import FaultPlan, ScoringModel, create_app, load_model, running_server  # noqa: E402
from distill.teachers.api import (  # noqa: E402
    APITeacher,
    PayloadError,
    RetryPolicy,
    TeacherAPIError,
    _Spelling,
    parse_echo,
    parse_prompt_logprobs,
)
from distill.teachers.base import canonical, sequence_topk  # noqa: E402
from distill.teachers.tokens import ByteVocab  # noqa: E402

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "teacher_tiny_llama.json"
ROOT = Path(__file__).resolve().parents[1]
CORPUS = json.loads((DATA / "malformed_payloads.json").read_text())
K = 6


@pytest.fixture(scope="module")
def model():
    return load_model(str(CONFIG), seed=0)


@pytest.fixture(scope="module")
def vocab(model):
    return ByteVocab(model.config.vocab_size)


@pytest.fixture(scope="module")
def server(model, vocab):
    with running_server(create_app(ScoringModel(model, vocab), max_logprobs=32)) as url:
        yield url


def in_process(model, sequence, k=K):
    with torch.no_grad():
        return canonical(sequence_topk(model(torch.tensor([sequence])).logits[0], k))


SEQUENCES = [list(b"the teacher speaks"), list(b"ok"), list(b"!"), [0, 255, 256, 259, 7], list(b"a" * 40)]


@pytest.mark.parametrize("mode", ["echo", "prompt_logprobs"])
@pytest.mark.parametrize("max_tokens", [0, 1])
@pytest.mark.parametrize("as_ids", [True, False], ids=["token_id", "spelled"])
def test_client_equals_in_process_model(server, model, vocab, mode, max_tokens, as_ids):
    teacher = APITeacher(server, vocab, k=K, mode=mode, max_tokens=max_tokens, token_ids_as_strings=as_ids,
                         sequences_per_request=2, concurrency=3)
    teacher.check_tokenizer()
    answers = teacher.score(SEQUENCES)
    for sequence, answer in zip(SEQUENCES, answers):
        expected = in_process(model, sequence)
        assert answer.logprobs.shape == (len(sequence) - 1, K) and answer.logprobs.dtype == np.float32
        assert answer.ids.dtype == np.int64
        np.testing.assert_array_equal(answer.ids, expected.ids)
        np.testing.assert_allclose(answer.logprobs, expected.logprobs, rtol=0, atol=1e-5)
    assert teacher.stats.total_retries == 0


def test_score_batch_alignment_and_padding(server, model, vocab):
    teacher = APITeacher(server, vocab, k=K)
    batch = np.zeros((2, 8), np.int64)
    batch[0, :8], batch[1, :5] = list(b"abcdefgh"), list(b"xyzzy")
    mask = (np.arange(8) < np.array([[8], [5]])).astype(np.int64)
    out = teacher.score_batch(batch, mask)
    assert out.logprobs.shape == (2, 8, K)
    # Row j of sequence b is the distribution of token j+1: it equals the model's logits row j.
    for b, n in ((0, 8), (1, 5)):
        expected = in_process(model, batch[b, :n].tolist())
        np.testing.assert_allclose(out.logprobs[b, : n - 1], expected.logprobs, atol=1e-5)
        np.testing.assert_allclose(np.exp(out.logprobs[b, n - 1 :]).sum(-1), 1.0, rtol=1e-6)  # padding rows
    with pytest.raises(ValueError, match="not right-padded"):
        teacher.score_batch(batch, mask[:, ::-1])


def test_documented_command_serves(tmp_path, model, vocab):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "reference.teacher_server", "--model", str(CONFIG),
                             "--port", str(port), "--log-level", "error"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
        teacher = APITeacher(url, vocab, k=4)
        teacher.check_tokenizer()
        [answer] = teacher.score([list(b"from a subprocess")])
        np.testing.assert_allclose(answer.logprobs, in_process(model, list(b"from a subprocess"), 4).logprobs,
                                   atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/model"], "--model /no/such/model: no such folder or file"),
    (["--model", str(DATA / "malformed_payloads.json")], "needs a 'model_type'"),
    (["--model", str(ROOT / "README.md")], "not a JSON config"),
    (["--model", str(CONFIG), "--faults", "explode=0.1"], "unknown fault 'explode'"),
    (["--model", str(CONFIG), "--port", "70000"], "--port 70000"),
])
def test_server_cli_errors_are_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "reference.teacher_server", *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_tokenizer_mismatch_is_an_error(server, model):
    class ShiftedBytes(ByteVocab):  # a different tokenizer with the same vocabulary size
        def encode(self, text):
            return [(b + 1) % 256 for b in text.encode()]

    with pytest.raises(TeacherAPIError, match="tokenizer mismatch: the server tokenizes the probe text"):
        APITeacher(server, ShiftedBytes(model.config.vocab_size), k=K).check_tokenizer()

    class Respelled(ByteVocab):  # same ids for text, different spellings of the ids
        def id_to_token(self, token_id):
            return f"<{token_id}>"

        def token_to_id(self, token):
            return None

        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    with pytest.raises(TeacherAPIError, match=r"tokenizer mismatch on a probe of known ids: .* does not re-encode"):
        APITeacher(server, Respelled(model.config.vocab_size), k=K).check_tokenizer()


def test_http_errors_are_one_line(server, vocab):
    with pytest.raises(TeacherAPIError, match=r"HTTP 400: 'logprobs' must be an integer in \[0, 32\], got 99$"):
        APITeacher(server, vocab, k=99).score([list(b"abc")])
    with pytest.raises(TeacherAPIError, match="model 'other' is not served here"):
        APITeacher(server, vocab, k=2, model="other").score([list(b"abc")])


def test_retries_give_up_with_a_sentence(model, vocab):
    app = create_app(ScoringModel(model, vocab), faults=FaultPlan(error=1.0))
    with running_server(app) as url:
        teacher = APITeacher(url, vocab, k=2, retry=RetryPolicy(max_retries=3, base_delay=0.001))
        with pytest.raises(TeacherAPIError, match="gave up after 4 attempts; last failure: HTTP 500"):
            teacher.score([list(b"abc")])
    assert teacher.stats.retries["HTTP 500"] == 3 and teacher.stats.attempts == 4


@pytest.mark.falsifier_id("F-API-FAULTS-001")
def test_faults_are_retried_nothing_dropped_or_duplicated():
    """A bounded fault-injection run: every answer arrives once, equal to the model's, and retries are counted."""
    model = load_model(str(CONFIG), seed=0)
    vocab = ByteVocab(model.config.vocab_size)
    plan = FaultPlan(drop=0.06, error=0.06, throttle=0.06, stall=0.03, stall_seconds=3.0, seed=1)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 260, size=int(rng.integers(2, 24))).tolist() for _ in range(160)]
    with running_server(create_app(ScoringModel(model, vocab), faults=plan)) as url:
        teacher = APITeacher(url, vocab, k=4, concurrency=16, timeout=2.0,
                             retry=RetryPolicy(max_retries=10, base_delay=0.01, max_delay=0.2))
        answers = teacher.score(sequences)
    assert len(answers) == len(sequences)
    for sequence, answer in zip(sequences, answers):
        expected = in_process(model, sequence, 4)
        np.testing.assert_array_equal(answer.ids, expected.ids)
        np.testing.assert_allclose(answer.logprobs, expected.logprobs, atol=1e-5)
    retries, injected = teacher.stats.retries, plan.injected
    assert min(injected[f] for f in ("drop", "error", "throttle", "stall")) > 0, injected
    assert teacher.stats.answered == len(sequences)
    # Each injected fault cost one retry, of its kind; a slow answer on a busy machine may add a ReadTimeout.
    assert retries["HTTP 500"] == injected["error"] and retries["HTTP 429"] == injected["throttle"]
    assert retries["RemoteProtocolError"] + retries["ReadError"] == injected["drop"], (retries, injected)
    assert retries["ReadTimeout"] >= injected["stall"], (retries, injected)
    assert teacher.stats.attempts == len(sequences) + teacher.stats.total_retries


@pytest.mark.falsifier_id("F-API-PAYLOAD-001")
@pytest.mark.parametrize("case", CORPUS["cases"], ids=[c["name"] for c in CORPUS["cases"]])
def test_malformed_payload_gives_one_line_error(case):
    spelling = _Spelling(ByteVocab(260))
    parse = parse_echo if case["mode"] == "echo" else parse_prompt_logprobs
    with pytest.raises(PayloadError) as caught:
        parse(case["choice"], case["ids"], case["k"], spelling, "teacher API: sequence 0")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("teacher API: sequence 0")
    assert case["error"] in message, message


@pytest.mark.parametrize("mode", ["echo", "prompt_logprobs"])
def test_valid_corpus_base_parses(mode):
    """The corpus's cases are mutations of these valid choices: they parse, and keep the K largest."""
    parse = parse_echo if mode == "echo" else parse_prompt_logprobs
    out = parse(CORPUS["valid"][mode], [72, 105, 33], 2, _Spelling(ByteVocab(260)), "x")
    np.testing.assert_array_equal(out.ids, [[101, 105], [46, 44]])
    np.testing.assert_allclose(out.logprobs, [[-1.0, -1.5], [-0.5, -1.2]])


def test_malformed_answer_from_a_server_names_the_sequence(vocab):
    """A real server that answers 200 with a broken payload: the client's error names the sequence."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/completions")
    async def broken():
        return {"choices": [{"index": 0, "logprobs": {"tokens": ["token_id:97"], "top_logprobs": [None]}}]}

    with running_server(app) as url, pytest.raises(PayloadError, match="sequence 0: missing positions"):
        APITeacher(url, vocab, k=2).score([list(b"ab")])
    with running_server(app) as url, pytest.raises(PayloadError, match="choice indices"):
        APITeacher(url, vocab, k=2, sequences_per_request=2).score([list(b"ab"), list(b"cd")])


def test_flags_build_a_cached_api_teacher(server, model, vocab, tmp_path):
    import argparse

    from distill.teacher_cache import CachedTeacher
    from distill.teachers.options import add_api_teacher_arguments, api_teacher_from_args

    parser = argparse.ArgumentParser()
    add_api_teacher_arguments(parser)
    args = parser.parse_args(["--teacher-url", server, "--teacher-k", "3", "--teacher-mode", "prompt_logprobs",
                              "--teacher-cache", str(tmp_path)])
    teacher = api_teacher_from_args(args, vocab)
    assert isinstance(teacher, CachedTeacher)
    probes = teacher.upstream.stats.answered  # the tokenizer check's request
    first = teacher.score([list(b"cache me")])
    again = teacher.score([list(b"cache me")])
    assert teacher.upstream.stats.answered == probes + 1 and teacher.stats.hits == 1
    np.testing.assert_array_equal(first[0].logprobs, again[0].logprobs)
    np.testing.assert_allclose(first[0].logprobs, in_process(model, list(b"cache me"), 3).logprobs, atol=1e-5)
    for argv, message in ((["--teacher-url", "localhost:80"], "--teacher-url 'localhost:80': expected http://"),
                          (["--teacher-url", server, "--teacher-k", "0"], "--teacher-k '0': expected a whole number")):
        with pytest.raises(ValueError, match=message):
            api_teacher_from_args(parser.parse_args(argv), vocab)


def test_tokenizer_json_vocabulary_end_to_end(tmp_path, model):
    """A trained byte-level BPE tokenizer.json on both sides: spelled tokens ('Ġthe') re-encode to their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from distill.teachers.tokens import HFVocab

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=model.config.vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the teacher and the student " * 20, "top-k log-probs over HTTP"], trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    vocab = HFVocab(path)
    assert vocab.vocab_size <= model.config.vocab_size
    with running_server(create_app(ScoringModel(model, vocab))) as url:
        for mode in ("echo", "prompt_logprobs"):
            teacher = APITeacher(url, vocab, k=4, mode=mode, token_ids_as_strings=False)
            teacher.check_tokenizer()
            sequence = vocab.encode("the student and the teacher")
            [answer] = teacher.score([sequence])
            np.testing.assert_allclose(answer.logprobs, in_process(model, sequence, 4).logprobs, atol=1e-5)
    with pytest.raises(ValueError, match=r"no tokenizer\.json there"):
        HFVocab(tmp_path / "missing")


def test_padded_embedding_rows_past_the_tokenizer(model):
    """A model with more rows (260) than its tokenizer has ids (256): the server names them token_id:N and the
    client accepts them when told the model's vocab_size, and rejects them otherwise."""
    sequence = [*b"pad", 258, 259, *b"ok"]
    with running_server(create_app(ScoringModel(model, ByteVocab(256)))) as url:
        teacher = APITeacher(url, ByteVocab(256), k=K, token_ids_as_strings=False, vocab_size=260)
        [answer] = teacher.score([sequence])
        np.testing.assert_allclose(answer.logprobs, in_process(model, sequence).logprobs, atol=1e-5)
        message = r"position 3: token string 'token_id:258' does not re-encode to prompt id 258 \(it encodes to no"
        with pytest.raises(PayloadError, match=message):
            APITeacher(url, ByteVocab(256), k=K, token_ids_as_strings=False).score([sequence])
