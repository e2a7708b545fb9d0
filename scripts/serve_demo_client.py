"""The client half of `scripts/serve_demo.sh`: a few requests to `carrot serve` with the `openai` SDK.

    python scripts/serve_demo_client.py --base-url http://127.0.0.1:PORT/v1 --pinned NAME

Prints, for each request, the candidate that answered, the gateway's x-carrot-* headers and the answer.
"""

import argparse
import sys
import time

import httpx
from openai import OpenAI

HEADERS = ("x-carrot-request-id", "x-carrot-model", "x-carrot-mu", "x-carrot-predicted-quality",
           "x-carrot-predicted-cost", "x-carrot-fallbacks")


def show(title: str, headers, model: str, answer: str, seconds: float) -> None:
    print(f"\n=== {title}  ({seconds:.1f} s)")
    print(f"answered by: {model}")
    for name in HEADERS:
        print(f"  {name}: {headers.get(name)}")
    print("  answer: " + answer.strip().replace("\n", "\n          "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--pinned", required=True, help="a candidate name to pin (no routing)")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused-on-loopback", max_retries=0, timeout=300)
    options = {"max_tokens": args.max_tokens, "temperature": 0}

    requests = [
        ("carrot (the router's default μ)", "carrot", "Which gas do plants absorb from the air?"),
        ("carrot:0.9 (μ = 0.9: cost matters most)", "carrot:0.9",
         "Write a python function to check whether a number is prime."),
        (f"pinned to {args.pinned} (no routing)", args.pinned, "Name three primary colours."),
    ]
    request_ids = []
    for title, model, prompt in requests:
        started = time.perf_counter()
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], **options)
        completion = raw.parse()
        request_ids.append(raw.headers.get("x-carrot-request-id"))
        show(title, raw.headers, completion.model, completion.choices[0].message.content or "",
             time.perf_counter() - started)
        print(f"  usage: {completion.usage.prompt_tokens} prompt + {completion.usage.completion_tokens} completion tokens")

    title = "carrot:0.3, streamed"
    print(f"\n=== {title}")
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="carrot:0.3", messages=[{"role": "user", "content": "Prove that the square root of 2 is irrational."}],
        stream=True, stream_options={"include_usage": True}, **options)
    pieces, model, usage, first = [], None, None, None
    print("  streaming: ", end="", flush=True)
    for chunk in raw.parse():
        model = chunk.model or model
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter() - started
                pieces.append(choice.delta.content)
                print(choice.delta.content, end="", flush=True)
    print()
    show(title, raw.headers, model, "".join(pieces), time.perf_counter() - started)
    print(f"  first token after {first or float('nan'):.2f} s; usage: "
          f"{usage.completion_tokens if usage else '?'} completion tokens")

    # A label for the first answer (a thumbs up): it joins that request in the outcome log.
    gateway = args.base_url.rstrip("/").removesuffix("/v1")
    response = httpx.post(f"{gateway}/v1/feedback", json={"request_id": request_ids[0], "score": 1.0}, timeout=30)
    print(f"\n=== feedback {{request_id: {request_ids[0]}, score: 1.0}} -> HTTP {response.status_code} {response.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
