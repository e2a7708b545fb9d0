"""The local LLM's OpenAI-compatible server, checked with the `openai` SDK.

Fast tests use a tiny randomly initialised Llama with a real tokenizer (all-MiniLM-L6-v2's, given a
chat template): the schema, streaming, usage, failure injection and errors do not depend on the
weights. The real SmolLM2 model is exercised in `test_local_llm.py` and `test_serve_real_llm.py` (slow).
"""

import asyncio
import json
import threading

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from carrot_hub.building import default_encoder_path
from carrot_hub.serving.local_llm import LocalLLM
from carrot_hub.serving.local_llm_server import create_app

MODEL_ID = "tiny-local"
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llm() -> LocalLLM:
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LocalLLM(LlamaForCausalLM(config), tokenizer, MODEL_ID)


def _client(app) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(base_url="http://local.test/v1", api_key="unused", max_retries=0,
                              http_client=httpx.AsyncClient(transport=transport, base_url="http://local.test"))


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def test_completion_and_stream_agree_and_report_usage(tiny_llm):
    async def run():
        client = _client(create_app(tiny_llm))
        plain = await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=0)
        stream = await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=0,
                                                      stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        return plain, chunks

    plain, chunks = asyncio.run(run())
    prompt_tokens = int(tiny_llm.prompt_ids(MESSAGES).shape[1])
    assert plain.model == MODEL_ID
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage.prompt_tokens == prompt_tokens
    assert 1 <= plain.usage.completion_tokens <= 6
    assert plain.choices[0].finish_reason == ("length" if plain.usage.completion_tokens == 6 else "stop")

    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content  # greedy: the same answer both ways
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_stream_without_include_usage_has_no_usage_chunk(tiny_llm):
    async def run():
        stream = await _client(create_app(tiny_llm)).chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, max_tokens=3, temperature=0, stream=True)
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_max_tokens_is_respected_and_seeded_sampling_repeats(tiny_llm):
    async def run():
        client = _client(create_app(tiny_llm))
        answers = []
        for _ in range(2):
            answers.append(await client.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, max_completion_tokens=4, temperature=1.5, seed=7))
        return answers

    first, second = asyncio.run(run())
    assert first.usage.completion_tokens <= 4
    assert first.choices[0].message.content == second.choices[0].message.content


def test_models_and_health(tiny_llm):
    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(tiny_llm)),
                                     base_url="http://local.test") as client:
            return (await client.get("/v1/models")).json(), (await client.get("/health")).json()

    models, health = asyncio.run(run())
    assert [m["id"] for m in models["data"]] == [MODEL_ID]
    assert health == {"status": "ok", "model": MODEL_ID}


def test_fail_first_answers_503_then_serves(tiny_llm):
    app = create_app(tiny_llm, fail_first=2)

    async def run():
        client = _client(app)
        errors = []
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
            errors.append(caught.value)
        answer = await client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2)
        return errors, answer

    errors, answer = asyncio.run(run())
    assert [e.status_code for e in errors] == [503, 503]
    assert errors[0].body["code"] == "injected_failure"
    assert answer.usage.completion_tokens >= 1


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": MODEL_ID, "messages": []}, 400, "messages"),
    ({"model": MODEL_ID}, 400, "messages"),
    ({"model": "gpt-4", "messages": MESSAGES}, 404, "tiny-local"),
    ({"model": MODEL_ID, "messages": MESSAGES, "temperature": 3}, 400, "temperature"),
    ({"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 5000}, 400, "at most 1024"),
    ({"model": MODEL_ID, "messages": MESSAGES, "n": 2}, 400, "n"),
    ({"model": MODEL_ID, "messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "does not support tools"),
    ({"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages"),
])
def test_bad_requests_get_openai_errors(tiny_llm, body, status, fragment):
    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(tiny_llm)),
                                     base_url="http://local.test") as client:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return await client.post("/v1/chat/completions", content=content,
                                     headers={"content-type": "application/json"})

    response = asyncio.run(run())
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_cancelled_generation_stops_early(tiny_llm):
    cancelled = threading.Event()
    pieces = []

    def on_text(piece):
        pieces.append(piece)
        cancelled.set()  # the client went away after the first piece

    result = tiny_llm.generate(MESSAGES, max_new_tokens=50, temperature=0, on_text=on_text, cancelled=cancelled)
    assert result.completion_tokens <= 2 and len(pieces) == 1
    assert result.finish_reason == "stop"
