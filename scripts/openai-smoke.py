#!/usr/bin/env python3
"""Uses a running `tokenfab serve` the way a user of the `openai` Python SDK would, asserting the
results: models, chat, streamed chat with usage, completions with logprobs and echo, errors.

    python3 scripts/openai-smoke.py --base-url http://127.0.0.1:8000/v1 [--api-key KEY]

Exits 0 when every check passes; prints what failed otherwise.
"""

import argparse
import sys

try:
    import openai
except ImportError:
    sys.exit("openai-smoke: the `openai` package is missing: python3 -m pip install openai")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)

    models = client.models.list()
    model = models.data[0].id
    assert model, models
    print(f"model: {model}")

    # Chat, not streamed.
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    msg = chat.choices[0].message
    assert msg.role == "assistant" and msg.content, chat
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, chat.usage
    print(f"chat: {msg.content!r}")

    # Chat, streamed, with the usage chunk; it must say the same as the non-streamed one.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == msg.content, (text, msg.content)
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert finish == chat.choices[0].finish_reason, finish
    print(f"stream: {text!r}")

    # Chat logprobs.
    lp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
    )
    content = lp.choices[0].logprobs.content
    assert len(content) >= 1 and len(content[0].top_logprobs) == 2, lp
    assert all(t.logprob <= 0 for t in content), content

    # Completions with logprobs, and echo (as lm-eval's loglikelihood asks).
    comp = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    c = comp.choices[0]
    assert c.text and len(c.logprobs.tokens) == 5, comp
    assert all(v <= 0 for v in c.logprobs.token_logprobs), c.logprobs
    assert "".join(c.logprobs.tokens) == c.text, (c.logprobs.tokens, c.text)
    print(f"completion: {c.text!r}")
    echo = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    e = echo.choices[0]
    assert e.text.startswith("The capital of France is"), e.text
    assert e.logprobs.token_logprobs[0] is None, e.logprobs
    assert e.logprobs.top_logprobs[0] is None, e.logprobs
    assert e.logprobs.text_offset[0] == 0, e.logprobs

    # Batched prompts and n.
    many = client.completions.create(model=model, prompt=["Hello", "Goodbye"], max_tokens=3, n=2, seed=1)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3], many

    # Errors come back as the SDK's typed exceptions.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=3, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as err:
        assert "temperature" in str(err), err
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass

    print("openai-smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
